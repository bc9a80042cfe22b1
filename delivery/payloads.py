"""Push content as the providers want it: locale choice, rendering, APNs and FCM v1 bodies, size limits.

Everything here works on a content *spec*: the plain dict a PushContent freezes into
(``PushContent.spec()``), which a Dispatch keeps so edits never reach a send in flight::

    {"title", "subtitle", "body", "image_url", "tap_action", "tap_url", "data": {key: str},
     "ios": {"sound", "badge", "category", "thread_id", "interruption_level", "mutable_content"},
     "android": {"channel_id", "icon", "color", "priority"},
     "silent", "ttl_seconds", "collapse_key", "default_locale",
     "variants": {locale: {"title", "subtitle", "body", "image_url", "tap_url"}}}
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from liquid.exceptions import LiquidError

from accounts.json_values import json_compact_utf8
from delivery.personalization import (
    VALUE_BYTES,
    is_templated,
    liquid_message,
    loopback_http,
    rendered_in,
    template_attribute_outputs,
    template_attributes_read,
    template_check,
    template_context_gaps,
    template_reads,
    template_reads_now,
    template_render,
    template_whole_object_outputs,
    template_worst_case_bytes,
    url_form_check,
    url_scheme_check,
)

APNS_LIMIT = 4096
FCM_LIMIT = 4096
APNS_COLLAPSE_ID_LIMIT = 64
FCM_MAX_TTL = 2_419_200
# The text fields a locale variant may override; all of them may hold Liquid.
VARIANT_FIELDS = ("title", "subtitle", "body", "image_url", "tap_url")
TAP_ACTIONS = ("open_app", "deep_link", "url")
INTERRUPTION_LEVELS = ("", "passive", "active", "time-sensitive", "critical")
ANDROID_PRIORITIES = ("normal", "high")
# Custom data keys the payloads use themselves, or that FCM refuses.
RESERVED_DATA_KEYS = ("aps", "pushdesk", "from", "message_type", "notification", "collapse_key")
RESERVED_DATA_PREFIXES = ("pushdesk_", "google", "gcm")
# Delivery ids are bigints: the worst case is 19 digits.
_ID_PLACEHOLDER = 10**18


@dataclass(slots=True)
class RenderedMessage:
    """The texts of one message, rendered for one profile."""

    title: str = ""
    subtitle: str = ""
    body: str = ""
    image_url: str = ""
    tap_url: str = ""
    data: dict[str, str] = field(default_factory=dict)


# A dispatch's context may carry each recipient's own context (API triggers), by profile id.
RECIPIENT_CONTEXTS = "_recipients"


def recipient_context(context: dict | None, profile_id: int | None, *, own: dict | None = None) -> dict:
    """The context one recipient's message renders with at its send, from the dispatch's ``context``:
    the shared one, overlaid by their own. A call's row, appended with its values (``own``), reads
    them under the dispatch's, which its gate held to the approved sends' (``context.campaign``): a
    row naming one of them does not reword it. A check of a row before it is written renders with
    what this returns for it, so it measures what its send will."""
    if own:
        return {**own, **(context or {})}
    context = context or {}
    theirs = context.get(RECIPIENT_CONTEXTS) or {}
    shared = {key: value for key, value in context.items() if key != RECIPIENT_CONTEXTS}
    if profile_id is None or str(profile_id) not in theirs:
        return shared
    return {**shared, **theirs[str(profile_id)]}


def normalize_locale(locale: str) -> str:
    """``fr_FR`` and ``FR-fr`` are both ``fr-fr``."""
    return (locale or "").strip().replace("_", "-").lower()


def variant_choose(spec: dict, locale: str) -> str | None:
    """The key of the locale variant for a profile's ``locale``, or None for the content's default.

    Falls back from the exact locale (``fr-ca``) to its language (``fr``), then to another
    region of that language (``fr-fr``), then to the default texts. The default texts are in the
    spec's ``default_locale``: they count as that locale's variant, so a profile of that language
    gets them rather than another region's variant (``en-us`` gets the ``en`` texts, not ``en-gb``).
    """
    variants = spec.get("variants") or {}
    if not variants or not locale:
        return None
    wanted = normalize_locale(locale)
    by_norm = {normalize_locale(k): k for k in variants}
    default = normalize_locale(spec.get("default_locale") or "")
    if wanted in by_norm:
        return by_norm[wanted]
    if wanted == default:
        return None
    language = wanted.split("-", 1)[0]
    if language in by_norm:
        return by_norm[language]
    if language == default.split("-", 1)[0]:
        return None
    for norm in sorted(by_norm):
        if norm.split("-", 1)[0] == language:
            return by_norm[norm]
    return None


def variant_texts(spec: dict, variant: str | None) -> dict[str, str]:
    """The text fields of ``variant`` (None: the default), falling back field by field to the default."""
    texts = {name: spec.get(name, "") or "" for name in VARIANT_FIELDS}
    if variant is not None:
        for name, value in (spec["variants"].get(variant) or {}).items():
            if name in VARIANT_FIELDS and value:
                texts[name] = value
    return texts


def variant_own_fields(spec: dict, variant: str) -> set[str]:
    """The text fields ``variant`` writes itself; the others are the default's (``variant_texts``),
    whose errors are said once, at the default's field."""
    texts = (spec.get("variants") or {}).get(variant) or {}
    return {name for name, value in texts.items() if name in VARIANT_FIELDS and value}


def message_render(spec: dict, *, profile: dict, context: dict | None = None) -> RenderedMessage:
    """Render the spec for one profile (``profile``: external_id, locale, timezone, attributes).

    Raises liquid.exceptions.LiquidError when a template fails at render time.
    """
    context = context or {}
    texts = variant_texts(spec, variant_choose(spec, profile.get("locale", "")))
    out = RenderedMessage(
        **{name: template_render(source, profile=profile, context=context) for name, source in texts.items()}
    )
    out.data = {
        key: template_render(value, profile=profile, context=context) for key, value in (spec.get("data") or {}).items()
    }
    return out


def message_render_in(spec: dict, *, profile: dict, context: dict | None = None, zone: dt.tzinfo) -> RenderedMessage:
    """``message_render``, its texts' ``now`` read in ``zone`` (``rendered_in``): a send's zone."""
    with rendered_in(zone):
        return message_render(spec, profile=profile, context=context)


def message_render_failure(spec: dict, *, profile: dict, context: dict | None = None) -> tuple[str, str] | None:
    """Why ``message_render`` fails for ``profile``: the first text that does not render, by its path
    as the content's errors name it in the API (``body``, ``variants.fr.title``, ``data.url``), and
    Liquid's message with the line it points at; a page names the place in its own words. None when
    every text renders."""
    context = context or {}
    variant = variant_choose(spec, profile.get("locale", ""))
    own = (spec.get("variants") or {}).get(variant) or {} if variant is not None else {}
    sources = [
        (f"variants.{variant}.{name}" if own.get(name) else name, source)
        for name, source in variant_texts(spec, variant).items()
    ]
    sources += [(f"data.{key}", value) for key, value in (spec.get("data") or {}).items()]
    for path, source in sources:
        try:
            template_render(source, profile=profile, context=context)
        except LiquidError as exc:
            return path, liquid_message(exc)
    return None


def _spec_sources(spec: dict) -> list[str]:
    sources = [spec.get(name, "") or "" for name in VARIANT_FIELDS]
    sources += list((spec.get("data") or {}).values())
    for variant in (spec.get("variants") or {}).values():
        sources += list(variant.values())
    return sources


def spec_is_personalized(spec: dict) -> bool:
    """True when any text depends on the profile or context (so each message is rendered)."""
    return any(is_templated(s) for s in _spec_sources(spec))


def spec_reads(spec: dict, name: str) -> bool:
    """True when any text uses the variable ``name``: ``profile`` (its message cannot be rendered
    from the context alone) or ``context`` (the call's); or a value under it, by its dotted path
    (``context.campaign.name``: ``template_reads``)."""
    return any(template_reads(s, name) for s in _spec_sources(spec))


def spec_reads_now(spec: dict) -> bool:
    """True when any text renders the moment it is rendered at (``template_reads_now``): its
    previews say which moment they show."""
    return any(template_reads_now(s) for s in _spec_sources(spec) if isinstance(s, str))


def spec_context_gaps(spec: dict, *, given: dict) -> str:
    """What a send whose context is ``given`` shows empty, in words ("{{ context.order }} in its
    body and …"; "" when nothing): each output ``template_context_gaps`` finds, with its field named
    as ``spec_validate`` names it (``body``, ``variants.fr.title``, ``data.order``)."""
    return " and ".join(
        f"{output} in its {field}"
        for field, source in _named_sources(spec)
        for output in template_context_gaps(source, given=given)
    )


def _named_sources(spec: dict) -> list[tuple[str, str]]:
    """Every text of the spec that may hold Liquid, with its field named as ``spec_validate`` names
    it (``body``, ``variants.fr.title``, ``data.order``)."""
    sources = [(name, spec.get(name, "") or "") for name in VARIANT_FIELDS]
    for locale, texts in (spec.get("variants") or {}).items():
        sources += [(f"variants.{locale}.{name}", value) for name, value in dict(texts).items()]
    sources += [(f"data.{key}", value) for key, value in (spec.get("data") or {}).items()]
    return [(field, source) for field, source in sources if isinstance(source, str)]


def spec_attributes_unseen(spec: dict, *, seen: set[str]) -> list[tuple[str, str, str | None]]:
    """The (field, attribute name, default) of each ``profile.attributes.<name>`` the spec reads
    that is not among ``seen`` (the names profiles hold): a misspelt name renders empty, or its
    default, for every recipient. ``default`` is what the field then shows in its place: the
    (first) default when every output of the name there is a plain one with a ``default``, "" when
    the outputs are plain and one has none, None when the text reads it in any other way."""
    found = []
    for place, source in _named_sources(spec):
        names = [name for name in template_attributes_read(source) if name not in seen]
        if not names:
            continue
        outputs = template_attribute_outputs(source)
        for name in names:
            defaults = [default for attribute, default in outputs or [] if attribute == name]
            shown = None if outputs is None or not defaults else (defaults[0] if all(defaults) else "")
            found.append((place, name, shown))
    return found


# JSON's longest escape of one byte of text (a control character as ``\\u00XX``); a character of
# two to four bytes escapes to at most twelve.
_ESCAPE_BYTES = 6


@dataclass(frozen=True, slots=True)
class ProfileBound:
    """How much a spec's payloads can grow with a profile, known without reading the profile.

    For content whose only reads of the profile are ``{{ profile.attributes.<name> }}`` outputs
    (``spec_profile_bound``): rendered with each of those attributes set to one character, a
    payload grows, once a real value replaces it, by at most ``times[name]`` bytes per byte of
    the value (its outputs' count, each escaped at JSON's worst), plus ``slack`` (every default
    counted as if it showed beside the values). ``locales`` are the content's ("" the default);
    ``reads_context``: whether the room left depends on the call's context.
    """

    times: dict[str, int]
    slack: int
    locales: tuple[str, ...]
    reads_context: bool = True


def payload_sizes(spec: dict, *, profile: dict, context: dict) -> tuple[int, int]:
    """The APNs payload's and the FCM message's sizes (as each provider counts them) for one
    recipient, with a delivery id of 16 digits. Raises LiquidError when rendering fails."""
    message = message_render(spec, profile=profile, context=context)
    apns = len(encode(apns_payload(spec, message, delivery_id=2**53)))
    return apns, fcm_payload_bytes(fcm_message(spec, message, token="x" * 200, delivery_id=2**53))


def spec_profile_bound(spec: dict) -> ProfileBound | None:
    """The spec's ``ProfileBound``, or None when a text reads the profile otherwise than through
    plain attribute outputs (a filter, a tag, another field): only rendering per profile tells."""
    outputs: list[tuple[str, str]] = []
    for source in _spec_sources(spec):
        found = template_attribute_outputs(source)
        if found is None:
            return None
        outputs += found
    locales = ("", *(spec.get("variants") or {}))
    times = {}
    for name in sorted({name for name, _ in outputs}):
        grows = 0
        for locale in locales:
            short = payload_sizes(spec, profile={"locale": locale, "attributes": {name: "x" * 100}}, context={})
            long = payload_sizes(spec, profile={"locale": locale, "attributes": {name: "x" * 200}}, context={})
            grows = max(grows, *((b - a + 99) // 100 for a, b in zip(short, long, strict=True)))
        times[name] = grows * _ESCAPE_BYTES
    # A default shows where its value is empty: in each payload, at most twice (an image's URL is).
    slack = sum(2 * _ESCAPE_BYTES * len(default.encode()) for _, default in outputs)
    return ProfileBound(times=times, slack=slack, locales=locales, reads_context=spec_reads(spec, "context"))


def profile_bound_budget(spec: dict, bound: ProfileBound, *, context: dict) -> int | None:
    """The bytes that the bounded attributes' values may take (each byte counted ``bound.times``)
    for every payload of every locale to fit its provider's limit, with this context; negative
    when the context alone makes one too large, None when the content cannot be rendered with it."""
    from liquid.exceptions import LiquidError

    attributes = dict.fromkeys(bound.times, "x")
    least = None
    try:
        for locale in bound.locales:
            apns, fcm = payload_sizes(spec, profile={"locale": locale, "attributes": attributes}, context=context)
            room = min(APNS_LIMIT - apns, FCM_LIMIT - fcm)
            least = room if least is None else min(least, room)
    except LiquidError:
        return None
    return least - bound.slack


# --- APNs ---------------------------------------------------------------------------------------


def apns_payload(spec: dict, message: RenderedMessage, *, delivery_id: int) -> dict:
    """The APNs JSON payload (``aps`` + our ``pushdesk`` key + the custom data beside them)."""
    aps: dict = {}
    ios = spec.get("ios") or {}
    if spec.get("silent"):
        aps["content-available"] = 1
    else:
        alert = {"title": message.title, "body": message.body}
        if message.subtitle:
            alert["subtitle"] = message.subtitle
        aps["alert"] = alert
        if ios.get("sound"):
            aps["sound"] = ios["sound"]
        if ios.get("badge") is not None:
            aps["badge"] = ios["badge"]
        if ios.get("category"):
            aps["category"] = ios["category"]
        if ios.get("thread_id"):
            aps["thread-id"] = ios["thread_id"]
        if ios.get("interruption_level"):
            aps["interruption-level"] = ios["interruption_level"]
        # The Notification Service Extension downloads the image, so an image needs it too.
        if ios.get("mutable_content") or message.image_url:
            aps["mutable-content"] = 1
    pushdesk: dict = {"delivery": delivery_id, "action": spec.get("tap_action") or "open_app"}
    if message.tap_url and spec.get("tap_action") in ("deep_link", "url"):
        pushdesk["url"] = message.tap_url
    if message.image_url:
        pushdesk["image"] = message.image_url
    return {"aps": aps, "pushdesk": pushdesk, **message.data}


def collapse_key_sendable(key: str) -> bool:
    """Whether APNs can take ``key`` as its ``apns-collapse-id`` header: printable ASCII, no
    space at either end (an HTTP/2 field value)."""
    return all(" " <= c <= "~" for c in key) and key == key.strip()


def apns_options(spec: dict) -> dict:
    """The APNs request options of a spec: push type, priority, collapse id. The expiration is
    each delivery's own (what remains of its TTL), set by the send engine."""
    silent = bool(spec.get("silent"))
    return {
        "push_type": "background" if silent else "alert",
        "priority": 5 if silent else 10,
        "collapse_id": spec.get("collapse_key") or "",
    }


# --- FCM -----------------------------------------------------------------------------------------


def fcm_message(
    spec: dict, message: RenderedMessage, *, token: str, delivery_id: int, ttl_seconds: int | None = None
) -> dict:
    """The FCM HTTP v1 ``message`` (the request body is ``{"message": ...}``).

    ``ttl_seconds`` is what remains of the delivery's TTL (the spec's whole TTL when not given).
    """
    data = dict(message.data)
    data["pushdesk_delivery"] = str(delivery_id)
    data["pushdesk_action"] = spec.get("tap_action") or "open_app"
    if message.tap_url and spec.get("tap_action") in ("deep_link", "url"):
        data["pushdesk_url"] = message.tap_url
    android_spec = spec.get("android") or {}
    android: dict = {
        "priority": android_spec.get("priority") or "high",
        "ttl": f"{int(spec.get('ttl_seconds') or 0) if ttl_seconds is None else ttl_seconds}s",
    }
    if spec.get("collapse_key"):
        android["collapse_key"] = spec["collapse_key"]
    out: dict = {"token": token, "data": data, "android": android}
    if spec.get("silent"):
        return out
    notification = {"title": message.title, "body": message.body}
    if message.image_url:
        notification["image"] = message.image_url
    out["notification"] = notification
    options = {k: android_spec[k] for k in ("channel_id", "icon", "color") if android_spec.get(k)}
    if options:
        android["notification"] = options
    return out


def fcm_payload_bytes(message: dict) -> int:
    """The size FCM counts against its 4,096-byte limit: the message without its target."""
    return len(encode({k: v for k, v in message.items() if k != "token"}))


def fcm_payload_fits(message: dict) -> int | None:
    """None when the message surely fits FCM's limit, else its exact size (checked only when close).

    The bound counts every string six times (JSON's worst escape) plus the keys' structure:
    almost every real message is far below the limit, and is never encoded twice for it.
    """
    bound = 0
    for key, value in message.items():
        if key == "token":
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                bound += 8 + len(k) + (6 * len(str(v).encode()) if not isinstance(v, dict) else _bound(v))
        else:
            bound += 8 + len(key) + 6 * len(str(value).encode())
    if bound <= FCM_LIMIT:
        return None
    size = fcm_payload_bytes(message)
    return size if size > FCM_LIMIT else None


def _bound(values: dict) -> int:
    return sum(
        8 + len(k) + (6 * len(str(v).encode()) if not isinstance(v, dict) else _bound(v)) for k, v in values.items()
    )


def encode(payload: dict) -> bytes:
    """Compact UTF-8 JSON, as sent on the wire (the providers' request bodies too), from an
    encoder built once (json.dumps with options builds one on every call: 1.7 of its 6 µs)."""
    return json_compact_utf8(payload).encode()


# --- checks at save time -----------------------------------------------------------------------


def data_shape_check(data) -> None:
    """Refuse custom data that is not an object of strings (a number, a list, a nested object).

    Raises ValidationError({"data": message}).
    """
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValidationError({"data": "Custom data must map keys to strings."})


def variants_shape_check(variants) -> None:
    """Refuse locale variants that are not an object of locale → object of texts (strings).

    Raises ValidationError({"variants": [messages]}) naming each variant and field at fault.
    """
    if not isinstance(variants, dict):
        raise ValidationError({"variants": "Variants must be an object of locale → texts."})
    problems = []
    for locale, texts in variants.items():
        if not isinstance(texts, dict):
            problems.append(f"Variant '{locale}' must be an object of texts.")
            continue
        problems += [
            f"Variant '{locale}': its {name} must be text." for name, v in texts.items() if not isinstance(v, str)
        ]
    if problems:
        raise ValidationError({"variants": problems})


def spec_validate(spec: dict) -> None:
    """Check a spec the way the providers and the sandbox will see it; raise ValidationError if not.

    Every template must parse and use only known names; URLs must use an allowed scheme;
    options must be values the providers accept; the worst-case payload of every variant on
    both platforms must fit the platform's limit (the message names which part and by how much).
    One ValidationError names every wrong field, the payload sizes among them, but variants that
    are not an object of texts (``variants_shape_check``), alone. A variant's error is said for the
    texts it writes itself (``variant_own_fields``), and its payload measured when it writes any:
    the texts it takes from the default are the default's, said once, at the default's field.
    """
    errors: dict[str, list[str]] = {}

    def check(callable_, *args, **kwargs) -> None:
        try:
            callable_(*args, **kwargs)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                errors.setdefault(name, []).extend(messages)

    url_schemes = tuple(settings.PUSHDESK_URL_SCHEMES)
    deep_link_schemes = tuple(settings.PUSHDESK_DEEP_LINK_SCHEMES)
    variants = spec.get("variants") or {}
    variants_shape_check(variants)
    all_texts = [("", variant_texts(spec, None))]
    for locale, texts in variants.items():
        unknown = sorted(set(texts) - set(VARIANT_FIELDS))
        if unknown:
            errors.setdefault("variants", []).append(
                f"Variant '{locale}' has unknown field '{unknown[0]}'; use {', '.join(VARIANT_FIELDS)}."
            )
        if not _is_locale(locale):
            errors.setdefault("variants", []).append(f"'{locale}' is not a locale (e.g. fr or fr-CA).")
        all_texts.append((locale, variant_texts(spec, locale)))

    tap_action = spec.get("tap_action") or "open_app"
    if tap_action not in TAP_ACTIONS:
        errors.setdefault("tap_action", []).append(f"Unknown tap action; use {', '.join(TAP_ACTIONS)}.")
    for locale, texts in all_texts:
        where = f"variants.{locale}." if locale else ""
        own = variant_own_fields(spec, locale) if locale else set(VARIANT_FIELDS)
        for name, source in texts.items():
            if name in own:
                check(template_check, source, field=f"{where}{name}")
        # An image over http on this machine is for an app sending to the simulator alone, which the
        # spec does not know: ``image_refused_for_app`` judges it on save and at each row's send.
        if "image_url" in own and not loopback_http(texts["image_url"]):
            check(url_scheme_check, texts["image_url"], field=f"{where}image_url", allowed=url_schemes)
        if "tap_url" in own and tap_action == "url":
            check(url_scheme_check, texts["tap_url"], field=f"{where}tap_url", allowed=url_schemes)
        elif "tap_url" in own and tap_action == "deep_link":
            check(url_scheme_check, texts["tap_url"], field=f"{where}tap_url", allowed=deep_link_schemes)
        # A variant's empty texts are the default's: their absence is said at the default's fields.
        if not locale and tap_action in ("url", "deep_link") and not texts["tap_url"]:
            errors.setdefault("tap_url", []).append("A link is needed for this tap action.")
        if not locale and not spec.get("silent") and not texts["title"] and not texts["body"]:
            errors.setdefault("body", []).append("A visible push needs a title or a body.")

    data = spec.get("data") or {}
    try:
        data_shape_check(data)
    except ValidationError as exc:
        errors.setdefault("data", []).extend(exc.messages)
        data = {}
    for key, value in data.items():
        lowered = key.lower()
        if not key or lowered in RESERVED_DATA_KEYS or lowered.startswith(RESERVED_DATA_PREFIXES):
            errors.setdefault("data", []).append(f"'{key}' is a reserved data key.")
        check(template_check, value, field=f"data.{key}")

    ios = spec.get("ios") or {}
    if ios.get("interruption_level", "") not in INTERRUPTION_LEVELS:
        errors.setdefault("ios.interruption_level", []).append(
            f"Use one of: {', '.join(x for x in INTERRUPTION_LEVELS if x)}."
        )
    badge = ios.get("badge")
    if badge is not None and (not isinstance(badge, int) or badge < 0):
        errors.setdefault("ios.badge", []).append("The badge is a whole number, 0 or more.")
    android = spec.get("android") or {}
    if (android.get("priority") or "high") not in ANDROID_PRIORITIES:
        errors.setdefault("android.priority", []).append("Use normal or high.")
    color = android.get("color") or ""
    if color and not (len(color) == 7 and color[0] == "#" and all(c in "0123456789abcdefABCDEF" for c in color[1:])):
        errors.setdefault("android.color", []).append("A color is written #rrggbb.")
    ttl = spec.get("ttl_seconds")
    ttl_held = isinstance(ttl, int) and 0 <= ttl <= FCM_MAX_TTL
    if not ttl_held:
        errors.setdefault("ttl_seconds", []).append(f"The TTL is 0 to {FCM_MAX_TTL:,} seconds (4 weeks).")
    collapse_key = spec.get("collapse_key") or ""
    if len(collapse_key.encode()) > APNS_COLLAPSE_ID_LIMIT:
        errors.setdefault("collapse_key", []).append(f"At most {APNS_COLLAPSE_ID_LIMIT} bytes (APNs' limit).")
    elif not collapse_key_sendable(collapse_key):
        errors.setdefault("collapse_key", []).append(
            "Use letters, digits, spaces and ASCII punctuation, without a space at either end "
            "(APNs takes the collapse key as a header)."
        )
    # Measured beside the other checks, so that one answer says every error: custom data refused
    # above is left out, a TTL refused counts as 0, a text that does not parse as its letters.
    # A variant over the limit only by the default's texts is said at the default's (``body``).
    measured = {**spec, "data": data, "ttl_seconds": ttl if ttl_held else 0}
    default_sizes = None
    for locale, texts in all_texts:
        if not locale or variant_own_fields(spec, locale):
            sizes, messages = _size_problems(measured, texts, locale=locale, beside=default_sizes)
            if messages:
                errors.setdefault(f"variants.{locale}" if locale else "body", []).extend(messages)
            default_sizes = default_sizes or sizes
    if errors:
        raise ValidationError(errors)


# The options sent as they are written: no Liquid is rendered in them.
_PLAIN_IOS_OPTIONS = ("sound", "category", "thread_id")
_PLAIN_ANDROID_OPTIONS = ("channel_id", "icon")


def _is_locale(locale: str) -> bool:
    parts = normalize_locale(locale).split("-")
    return all(part.isalnum() for part in parts)


def image_refused_for_app(image_url: str, *, uses_simulator: bool) -> bool:
    """Whether an image may not go to the app's phones: over http on this machine (``loopback_http``)
    for an app that does not send to the push simulator. The simulator's phones and the previews are
    on this machine; a real phone's "this machine" is itself, no image server. The one rule for a
    save (``spec_authoring_check``) and a send, which fails the row (``delivery.services.sending``):
    an app switched off the simulator since its content was saved."""
    return not uses_simulator and loopback_http(image_url)


def spec_authoring_check(spec: dict, *, uses_simulator: bool = False) -> None:
    """Check what content must be when it is written, beyond what a send needs (``spec_validate``):
    its URLs are ones a phone opens (``url_form_check``), its texts write no whole object
    (``template_whole_object_outputs``: ``{{ profile.attributes }}``), its options sent as written (sound,
    category, thread id, channel, icon, collapse key) hold no Liquid, its default locale is a
    locale, and no two of its texts are for the same locale (a variant written ``FR`` beside ``fr``, or for the default
    locale, would never be sent, or hide the default texts from the review). An image over http on
    this machine is for an app that sends to the push simulator (``uses_simulator``) alone
    (``image_refused_for_app``, which a send asks of each row too). Otherwise a send does not ask:
    content saved before these rules goes out as it was approved.

    Raises ValidationError naming each field (``image_url``, ``variants.fr.tap_url``, ``ios.thread_id``,
    ``variants``, ``default_locale``).
    """
    errors: dict[str, list[str]] = {}
    variants = spec.get("variants") or {}
    tap_action = spec.get("tap_action") or "open_app"
    for locale, texts in [("", variant_texts(spec, None))] + [(k, variant_texts(spec, k)) for k in variants]:
        where = f"variants.{locale}." if locale else ""
        names = ("image_url", "tap_url") if tap_action in ("url", "deep_link") else ("image_url",)
        if locale:  # the default's URLs, where a variant takes them, are said at the default's fields
            names = tuple(name for name in names if name in variant_own_fields(spec, locale))
        if "image_url" in names and image_refused_for_app(texts["image_url"], uses_simulator=uses_simulator):
            errors.setdefault(f"{where}image_url", []).append(
                "An image over http on this machine is only for an app that sends to the push simulator "
                "(its phones and previews are here); a phone loads an image over https from a server it reaches."
            )
        for name in names:
            try:
                url_form_check(texts[name], field=f"{where}{name}")
            except ValidationError as exc:
                for field, messages in exc.message_dict.items():
                    errors.setdefault(field, []).extend(messages)
    sources = [(name, spec.get(name, "") or "") for name in VARIANT_FIELDS]
    for locale, texts in variants.items():
        sources += [(f"variants.{locale}.{name}", value) for name, value in dict(texts).items()]
    sources += [(f"data.{key}", value) for key, value in (spec.get("data") or {}).items()]
    for field, source in sources:
        for output in template_whole_object_outputs(source) if isinstance(source, str) else ():
            errors.setdefault(field, []).append(
                f"{output} shows every attribute or value it holds, written as code: name one "
                "(profile.attributes.first_name, context.order_id)."
            )
    ios, android = spec.get("ios") or {}, spec.get("android") or {}
    options = {
        **{f"ios.{name}": ios.get(name) for name in _PLAIN_IOS_OPTIONS},
        **{f"android.{name}": android.get(name) for name in _PLAIN_ANDROID_OPTIONS},
        "collapse_key": spec.get("collapse_key"),
    }
    for field, value in options.items():
        if isinstance(value, str) and is_templated(value):
            errors.setdefault(field, []).append(
                "Liquid is not rendered here (only in the texts, the URLs and custom data): it would go out as written."
            )
    default_locale = spec.get("default_locale") or ""
    if default_locale and not _is_locale(default_locale):
        errors.setdefault("default_locale", []).append(f"'{default_locale}' is not a locale (e.g. en or en-US).")
    seen: dict[str, str] = {}
    default = normalize_locale(default_locale)
    for locale in variants:
        norm = normalize_locale(locale)
        if default and norm == default:
            errors.setdefault("variants", []).append(
                f"'{locale}' is the default locale ({default_locale}): its texts are the title, subtitle and body "
                "fields; remove the variant or change the default locale."
            )
        elif norm in seen:
            errors.setdefault("variants", []).append(
                f"'{seen[norm]}' and '{locale}' are the same locale: keep one variant for it."
            )
        seen.setdefault(norm, locale)
    if errors:
        raise ValidationError(errors)


def _worst_case_bytes(source: str) -> int:
    """``template_worst_case_bytes``; for a text that does not parse (its error said at its field),
    its letters: the least it could be once it does, so a size error is never one it cannot have."""
    try:
        return template_worst_case_bytes(source)
    except LiquidError:
        return len(json.dumps(source, ensure_ascii=False).encode()) - 2


def _size_problems(
    spec: dict, texts: dict[str, str], *, locale: str, beside: tuple[int, int] | None = None
) -> tuple[tuple[int, int], list[str]]:
    """Build both payloads with each templated part at its worst case and compare to the limits:
    their sizes (APNs, FCM) and what is wrong with them. ``beside``: the default's sizes, when
    measuring a variant; a platform's payload over the limit no more than the default's is the
    default's error, not said again."""
    worst = {name: _worst_case_bytes(source) for name, source in texts.items()}
    worst_data = {key: _worst_case_bytes(value) for key, value in (spec.get("data") or {}).items()}
    message = RenderedMessage(
        **{name: "x" * size for name, size in worst.items()}, data={k: "x" * n for k, n in worst_data.items()}
    )
    label = f" (locale {locale})" if locale else ""
    apns_size = len(encode(apns_payload(spec, message, delivery_id=_ID_PLACEHOLDER)))
    fcm_size = fcm_payload_bytes(fcm_message(spec, message, token="", delivery_id=_ID_PLACEHOLDER))
    default_apns, default_fcm = beside or (0, 0)
    problems = []
    if apns_size > APNS_LIMIT and (default_apns <= APNS_LIMIT or apns_size > default_apns):
        problems.append(("iOS (APNs)", apns_size, APNS_LIMIT))
    if fcm_size > FCM_LIMIT and (default_fcm <= FCM_LIMIT or fcm_size > default_fcm):
        problems.append(("Android (FCM)", fcm_size, FCM_LIMIT))
    if not problems:
        return (apns_size, fcm_size), []
    parts = {name: size for name, size in worst.items() if size}
    if worst_data:
        parts["custom data"] = sum(worst_data.values()) + sum(len(k) + 6 for k in worst_data)
    biggest = sorted(parts.items(), key=lambda item: -item[1])[:2]
    biggest_text = ", ".join(f"{name} up to {size:,} bytes" for name, size in biggest)
    messages = [
        f"The {platform} payload{label} can reach {size:,} bytes, {size - limit:,} over the {limit:,}-byte limit; "
        f"the largest parts: {biggest_text}. Shorten them (each {{{{ variable }}}} counts {VALUE_BYTES} bytes)."
        for platform, size, limit in problems
    ]
    return (apns_size, fcm_size), messages
