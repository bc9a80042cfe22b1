"""Push content: Liquid personalization, locale variants, payload builders and size limits."""

import pytest
from django.core.exceptions import ValidationError

from delivery.payloads import (
    APNS_LIMIT,
    apns_options,
    apns_payload,
    encode,
    fcm_message,
    message_render,
    spec_reads,
    spec_validate,
    variant_choose,
)
from delivery.personalization import template_check, template_render, template_worst_case_bytes


def spec(**changes) -> dict:
    base = {
        "title": "Hello {{ profile.attributes.first_name | default: 'there' }}",
        "subtitle": "",
        "body": "Your order {{ context.order_id }} is on its way.",
        "image_url": "",
        "tap_action": "open_app",
        "tap_url": "",
        "data": {},
        "ios": {
            "sound": "default",
            "badge": None,
            "category": "",
            "thread_id": "",
            "interruption_level": "",
            "mutable_content": False,
        },
        "android": {"channel_id": "", "icon": "", "color": "", "priority": "high"},
        "silent": False,
        "ttl_seconds": 3600,
        "collapse_key": "",
        "default_locale": "en",
        "variants": {},
    }
    base.update(changes)
    return base


def errors_of(exc: pytest.ExceptionInfo) -> dict:
    return exc.value.message_dict


# --- Liquid ---------------------------------------------------------------------------------------


def test_missing_attribute_renders_its_default():
    out = template_render(
        "Hi {{ profile.attributes.first_name | default: 'there' }}!", profile={"attributes": {}}, context={}
    )
    assert out == "Hi there!"


def test_missing_attribute_without_default_renders_empty():
    assert template_render("Hi {{ profile.attributes.first_name }}!", profile={"attributes": {}}, context={}) == "Hi !"


def test_profile_fields_attributes_and_context_render():
    out = template_render(
        "{{ profile.external_id }} {{ profile.attributes.city | upcase }} {{ context.code }}",
        profile={"external_id": "u1", "attributes": {"city": "Lyon"}},
        context={"code": "X1"},
    )
    assert out == "u1 LYON X1"


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("{{ profile.attributes.v | base64_decode }}", "/w=="),  # decodes to bytes that are not UTF-8
        ("{{ profile.attributes.v | round }}", "nan"),
        ("{{ profile.attributes.v | ceil }}", "1e400"),
        ("{{ profile.attributes.v | sum }}", "abc"),
        ("{{ profile.attributes.v | times: 0 }}", "1e400"),
        ("{{ profile.attributes.v | compact: 0 }}", {"a": 1}),
    ],
)
def test_a_filter_failing_on_a_profiles_value_is_a_liquid_error_naming_it(source, value):
    from liquid.exceptions import LiquidError

    with pytest.raises(LiquidError) as exc:
        template_render(source, profile={"attributes": {"v": value}}, context={})
    assert "a filter failed on a value" in str(exc.value.message)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Share: {{ 'x' | slice: 'a' }}", "slice expected an integer start, found str"),
        ("Countdown {% for i in (1..30) %}*{% endfor %}", "loop iteration limit reached"),
        ("{{ 'gA==' | base64_decode }}", "a filter failed on a value (UnicodeDecodeError)"),
    ],
)
def test_a_template_that_fails_whoever_receives_it_is_refused_on_save(source, message):
    with pytest.raises(ValidationError) as exc:
        template_check(source, field="body")
    assert errors_of(exc)["body"] == [f"This text cannot be rendered for anyone: {message}."]


@pytest.mark.parametrize(
    "source",
    [
        "{{ profile.attributes.visits | divided_by: 0 }}",
        "{% if profile.attributes.vip %}{{ context.total | modulo: 0.0 }}{% endif %}",
        "{% assign share = profile.attributes.n | times: 100 | divided_by: '0' %}{{ share }}",
        "{% liquid\n  assign n = profile.attributes.n | divided_by: -0\n  echo n\n%}",
        "{{ profile.attributes.n | divided_by: nil }}",
        # What Liquid reads as 0 (Python's int() and float(): any script's digits, white space
        # around, and 0 for text that is no number); "\\d" took "٠" as a number, not as 0.
        "{{ profile.attributes.n | divided_by: '\u0660' }}",
        "{{ profile.attributes.n | modulo: '\uff10.\uff10' }}",
        "{{ profile.attributes.n | divided_by: \u0660 }}",
        "{{ profile.attributes.n | divided_by: -\u0966.\u0966 }}",
        "{{ profile.attributes.n | divided_by: ' 0' }}",
        "{{ profile.attributes.n | divided_by: '0e3' }}",
        "{{ profile.attributes.n | modulo: 'none' }}",
        "{{ profile.attributes.n | divided_by: '' }}",
    ],
)
def test_a_division_by_a_literal_zero_is_refused_whatever_it_divides(source):
    with pytest.raises(ValidationError) as exc:
        template_check(source, field="body")
    assert "by 0, which fails for every value" in errors_of(exc)["body"][0]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("Hi {{ profile.attributes.name }}\n{% for i in (1..30) %}*{% endfor %}", 2),
        ("{% for i in (1..5) %}{% for j in (1..5) %}{{ context.code }}{% endfor %}{% endfor %}", 1),
        ("{% unless profile.attributes.vip %}{% for i in (1..21) %}.{% endfor %}{% endunless %}", 1),
    ],
)
def test_a_fixed_loop_past_the_limit_is_refused_though_the_text_reads_the_profile(source, line):
    """A loop over a fixed range runs as often for every recipient: past LOOP_LIMIT iterations in
    all it would fail each message at send time, so the text is refused when saved."""
    with pytest.raises(ValidationError) as exc:
        template_check(source, field="body")
    assert errors_of(exc)["body"] == [
        f"A loop here runs more than 20 times in all, whatever the profile (line {line})."
    ]


def test_a_text_past_the_output_limit_whatever_the_profile_is_refused():
    with pytest.raises(ValidationError) as exc:
        template_check("{% for i in (1..20) %}{{ profile.attributes.name }}" + "x" * 500 + "{% endfor %}", field="body")
    assert errors_of(exc)["body"] == ["This text is longer than 8192 characters, whatever the profile (line 1)."]


# A filter's result is bounded though the output never shows it: "replace" by "" puts its text
# between every character, so each one multiplies the length (2,000 characters cubed: 8e9).
_GROWN = '{{ "' + "a" * 2000 + '" | replace: "", "' + "a" * 2000 + '" | replace: "", "' + "a" * 2000 + '" | size }}'


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (_GROWN, "replace would make a text longer than 65536 characters"),
        (
            '{{ "abc" | split: "" | join: "' + "x" * 40000 + '" | size }}',
            "join would make a text longer than 65536 characters",
        ),
        ("{{ (1..70000) | join: ',' | size }}", "join takes lists of at most 65536 items"),
        ("{{ (1..70000) | sort | first }}", "sort takes lists of at most 65536 items"),
    ],
    ids=["replace", "join", "range-join", "range-sort"],
)
def test_a_filter_making_too_much_whatever_the_profile_is_refused_before_it_is_made(source, message):
    with pytest.raises(ValidationError) as exc:
        template_check(source, field="body")
    assert errors_of(exc)["body"] == [f"This text cannot be rendered for anyone: {message}."]
    with pytest.raises(ValidationError) as exc:
        template_check("{{ profile.attributes.name }}\n" + source, field="body")
    assert errors_of(exc)["body"] == [
        f"A filter here reaches a limit of the template sandbox, whatever the profile: {message} (line 2)."
    ]


def test_a_filter_making_too_much_from_a_profiles_value_fails_that_message_alone():
    from liquid.exceptions import ResourceLimitError

    source = '{{ profile.attributes.x | replace: "", profile.attributes.x | replace: "", profile.attributes.x | size }}'
    template_check(source, field="title")  # empty values make little
    assert template_render(source, profile={"attributes": {"x": "b" * 10}}, context={}) == "1330"
    with pytest.raises(ResourceLimitError, match="replace would make a text longer than 65536 characters"):
        template_render(source, profile={"attributes": {"x": "b" * 150}}, context={})  # 3.4M characters
    joined = "{{ context.items | join: context.separator | size }}"
    template_check(joined, field="body")
    with pytest.raises(ResourceLimitError, match="join would make a text longer than 65536 characters"):
        template_render(joined, profile={}, context={"items": ["a"] * 30000, "separator": "-" * 100})


# Filters that escape or encode their text make more than they take: from a value just under the
# bound (what a call's context may hold), past it.
_EXPANDING = [
    ("escape", "&" * 65_000),
    ("escape_once", "<" * 65_000),
    ("escapejs", "<" * 65_000),
    ("url_encode", "é" * 65_000),
    ("newline_to_br", "\n" * 65_000),
    ("base64_encode", "x" * 65_000),
    ("base64_url_safe_encode", "x" * 65_000),
]


@pytest.mark.parametrize(("name", "value"), _EXPANDING, ids=[name for name, _ in _EXPANDING])
def test_a_filter_expanding_a_value_past_the_bound_fails_that_message_with_a_template_error(name, value):
    from liquid.exceptions import ResourceLimitError

    source = f"{{{{ context.x | {name} | size }}}}"
    template_check(source, field="body")
    assert template_render(source, profile={}, context={"x": value[:100]}) != ""
    with pytest.raises(ResourceLimitError, match=f"^{name} would make a text longer than 65536 characters"):
        template_render(source, profile={}, context={"x": value})
    # Written in the text itself, it is refused on save, naming the filter, never cut short.
    with pytest.raises(ValidationError) as exc:
        template_check(f"{{{{ '{value}' | {name} | size }}}}", field="body")
    assert errors_of(exc)["body"] == [
        f"This text cannot be rendered for anyone: {name} would make a text longer than 65536 characters."
    ]


def test_a_profiles_largest_value_passes_through_filters():
    bio = "é" * 65000
    source = "{{ profile.attributes.bio | upcase | strip | split: '' | join: '' | slice: 0, 3 }}"
    assert template_render(source, profile={"attributes": {"bio": bio}}, context={}) == "ÉÉÉ"


def test_a_template_that_fails_only_for_some_values_is_saved():
    template_check("{{ 100 | divided_by: profile.attributes.count }}", field="body")
    template_check("{{ profile.attributes.n | divided_by: 0.5 | modulo: 10 }} {{ 'divided_by: 0' }}", field="body")
    template_check("{{ profile.attributes.n | divided_by: '\u0663' | modulo: \u0661\u0660 }}", field="body")  # 3, 10
    template_check("{% for t in context.items %}{{ t }}{% endfor %}", field="body")
    template_check("{% for i in (1..20) %}{{ context.code }}{% endfor %}", field="body")  # at the limit
    template_check("{% if profile.attributes.vip %}{% for i in (1..30) %}*{% endfor %}{% endif %}", field="body")


def test_syntax_error_is_refused_with_its_line():
    with pytest.raises(ValidationError) as exc:
        template_check("Hello\n{{ profile.attributes.name ", field="body")
    assert "line 2" in errors_of(exc)["body"][0]


def test_unknown_top_level_variable_is_refused():
    with pytest.raises(ValidationError) as exc:
        template_check("Hi {{ user.name }}", field="title")
    assert "Unknown variable 'user'" in errors_of(exc)["title"][0]


def test_an_unknown_name_is_refused_with_the_line_it_is_on():
    """A syntax error named its line; an unknown variable, profile field or filter did not, in a
    body of several lines."""
    cases = {
        "Your picks\nfor {{ profil.plan }}": "Unknown variable 'profil' (line 2)",
        "Hi\n\n{{ profile.first_name }}": "Unknown profile field 'first_name' (line 3)",
        "{{ context.x }}\n{{ context.x | shout }}": "Unknown filter 'shout' (line 2)",
    }
    for source, said in cases.items():
        with pytest.raises(ValidationError) as exc:
            template_check(source, field="body")
        assert errors_of(exc)["body"][0].startswith(said), source


def test_unknown_profile_field_points_to_attributes():
    with pytest.raises(ValidationError) as exc:
        template_check("Hi {{ profile.first_name }}", field="title")
    assert "profile.attributes.first_name" in errors_of(exc)["title"][0]


def test_unknown_filter_is_refused():
    with pytest.raises(ValidationError) as exc:
        template_check("{{ context.x | shout }}", field="body")
    assert "shout" in errors_of(exc)["body"][0]


def test_sandbox_has_no_include_or_render():
    for source in ("{% include 'secret' %}", "{% render 'secret' %}"):
        with pytest.raises(ValidationError):
            template_check(source, field="body")


def test_loop_and_assign_variables_are_not_unknown():
    template_check(
        "{% assign n = context.items | size %}{% for i in context.items %}{{ i }}{{ forloop.index }}{% endfor %}{{ n }}",
        field="body",
    )


def test_worst_case_counts_loops_and_literals():
    assert template_worst_case_bytes("plain") == 5
    assert template_worst_case_bytes("{{ context.a }}", value_bytes=10) == 10
    assert template_worst_case_bytes("{% for i in context.a %}ab{% endfor %}", value_bytes=10) == 2 * 20


# --- validation on save ----------------------------------------------------------------------------


def test_valid_content_passes():
    spec_validate(spec())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"image_url": "http://example.com/a.png"}, "image_url"),
        ({"tap_action": "url", "tap_url": "javascript:alert(1)"}, "tap_url"),
        ({"tap_action": "deep_link", "tap_url": "{{ context.link }}"}, "tap_url"),
        ({"tap_action": "url", "tap_url": ""}, "tap_url"),
        ({"data": {"aps": "x"}}, "data"),
        ({"data": {"n": 3}}, "data"),
        ({"ios": {**spec()["ios"], "interruption_level": "loud"}}, "ios.interruption_level"),
        ({"android": {**spec()["android"], "color": "red"}}, "android.color"),
        ({"ttl_seconds": 3_000_000}, "ttl_seconds"),
        ({"collapse_key": "k" * 65}, "collapse_key"),
        ({"collapse_key": "soldé"}, "collapse_key"),  # APNs takes it as a header: ASCII only
        ({"collapse_key": "sale\n"}, "collapse_key"),
        ({"collapse_key": " sale"}, "collapse_key"),
        ({"title": "", "body": ""}, "body"),
        ({"variants": {"fr": {"title": "{{ nope }}"}}}, "variants.fr.title"),
        ({"variants": {"fr": {"headline": "x"}}}, "variants"),
        ({"variants": {"fr": {"title": 5}}}, "variants"),
        ({"variants": {"fr": "Bonjour"}}, "variants"),
        ({"body": "Save {{ 100 | divided_by: 0 }}%"}, "body"),
        ({"data": {"n": "{% for i in (1..99) %}{% endfor %}"}}, "data.n"),
    ],
)
def test_bad_content_is_refused_naming_the_field(changes, field):
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(**changes))
    assert field in errors_of(exc), errors_of(exc)


def test_url_with_allowed_scheme_and_variable_path_is_accepted():
    spec_validate(spec(tap_action="url", tap_url="https://shop.example/cart/{{ profile.external_id }}"))


def test_oversize_payload_names_the_part_and_the_excess():
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(body="x" * 3000 + "{{ context.a }}" * 12))
    messages = errors_of(exc)["body"]
    assert any("iOS (APNs)" in m and "over the 4,096-byte limit" in m and "body up to" in m for m in messages)
    assert any("Android (FCM)" in m for m in messages)


@pytest.mark.parametrize(
    "body",
    [
        "{% assign s = '" + "x" * 900 + "' %}" + "{{ s }}" * 5,  # a literal assigned once, shown five times
        "{% capture s %}" + "x" * 800 + "{% endcapture %}" + "{{ s }}" * 5,
        "Hi {{ profile.attributes.name }}! {% assign s = '" + "x" * 900 + "' %}" + "{{ s }}" * 5,
    ],
)
def test_a_text_that_renders_over_the_limit_for_a_profile_without_attributes_is_refused(body):
    message_render(spec(body=body), profile={"attributes": {}}, context={})  # it renders, over 4 KB
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(body=body))
    assert any("iOS (APNs)" in m and "over the 4,096-byte limit" in m for m in errors_of(exc)["body"])


def test_oversize_locale_variant_is_named():
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(variants={"de": {"body": "ü" * 2100}}))
    assert "locale de" in errors_of(exc)["variants.de"][0]


# --- locales -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "chosen"),
    [
        ("fr-CA", "fr-CA"),
        ("fr_ca", "fr-CA"),
        ("fr-BE", "fr"),
        ("pt-PT", "pt-BR"),
        ("de-DE", None),
        ("", None),
    ],
)
def test_locale_variant_falls_back_to_language_then_default(locale, chosen):
    variants = {"fr-CA": {"title": "Allô"}, "fr": {"title": "Salut"}, "pt-BR": {"title": "Olá"}}
    assert variant_choose(spec(variants=variants), locale) == chosen


@pytest.mark.parametrize(
    ("default_locale", "locale", "chosen"),
    [
        ("en", "en-US", None),  # English texts, not the British variant
        ("en", "EN", None),
        ("en", "en_GB", "en-GB"),
        ("en", "fr-CA", "fr"),
        ("en-US", "en-AU", None),  # the default's language: its texts before another region's
        ("en-US", "en-GB", "en-GB"),
        ("de", "en-US", "en-GB"),  # no English default: the only English variant
    ],
)
def test_a_profile_of_the_default_locale_or_its_language_gets_the_default_texts(default_locale, locale, chosen):
    variants = {"en-GB": {"title": "Colour"}, "fr": {"title": "Couleur"}}
    assert variant_choose(spec(default_locale=default_locale, variants=variants), locale) == chosen


def test_variant_overrides_only_its_own_fields():
    s = spec(variants={"fr": {"title": "Bonjour {{ profile.attributes.first_name }}"}})
    message = message_render(
        s, profile={"locale": "fr-FR", "attributes": {"first_name": "Zoé"}}, context={"order_id": 7}
    )
    assert message.title == "Bonjour Zoé"
    assert message.body == "Your order 7 is on its way."


# --- payload builders ----------------------------------------------------------------------------------


def test_apns_payload_of_an_alert_with_ios_options():
    s = spec(
        subtitle="Today",
        image_url="https://img.example/a.png",
        tap_action="deep_link",
        tap_url="pushdesk://sale",
        data={"campaign": "c1"},
        ios={
            "sound": "chime.caf",
            "badge": 3,
            "category": "SALE",
            "thread_id": "sales",
            "interruption_level": "time-sensitive",
            "mutable_content": False,
        },
    )
    message = message_render(s, profile={"attributes": {"first_name": "Ann"}}, context={"order_id": 1})
    payload = apns_payload(s, message, delivery_id=42)
    assert payload["aps"] == {
        "alert": {"title": "Hello Ann", "body": "Your order 1 is on its way.", "subtitle": "Today"},
        "sound": "chime.caf",
        "badge": 3,
        "category": "SALE",
        "thread-id": "sales",
        "interruption-level": "time-sensitive",
        "mutable-content": 1,
    }
    assert payload["pushdesk"] == {
        "delivery": 42,
        "action": "deep_link",
        "url": "pushdesk://sale",
        "image": "https://img.example/a.png",
    }
    assert payload["campaign"] == "c1"


def test_silent_push_has_no_alert_and_goes_as_background_priority_5():
    s = spec(silent=True, title="", body="", data={"sync": "1"})
    message = message_render(s, profile={}, context={})
    payload = apns_payload(s, message, delivery_id=1)
    assert payload["aps"] == {"content-available": 1}
    options = apns_options(s)
    assert options == {"push_type": "background", "priority": 5, "collapse_id": ""}
    fcm = fcm_message(s, message, token="t", delivery_id=1)
    assert "notification" not in fcm
    assert fcm["data"]["sync"] == "1"


def test_fcm_message_with_android_options_ttl_and_collapse_key():
    s = spec(
        collapse_key="sale",
        ttl_seconds=600,
        image_url="https://img.example/a.png",
        android={"channel_id": "promo", "icon": "ic_sale", "color": "#ff8800", "priority": "normal"},
    )
    message = message_render(s, profile={"attributes": {}}, context={"order_id": 9})
    out = fcm_message(s, message, token="tok", delivery_id=5)
    assert out["token"] == "tok"
    assert out["notification"] == {
        "title": "Hello there",
        "body": "Your order 9 is on its way.",
        "image": "https://img.example/a.png",
    }
    assert out["android"] == {
        "priority": "normal",
        "ttl": "600s",
        "collapse_key": "sale",
        "notification": {"channel_id": "promo", "icon": "ic_sale", "color": "#ff8800"},
    }
    assert out["data"] == {"pushdesk_delivery": "5", "pushdesk_action": "open_app"}
    assert all(isinstance(v, str) for v in out["data"].values())


def test_worst_case_that_fits_renders_within_the_limit():
    s = spec(body="x" * 3500 + "{{ context.a }}")
    spec_validate(s)
    message = message_render(s, profile={}, context={"a": "y" * 100})
    assert len(encode(apns_payload(s, message, delivery_id=10**18))) <= APNS_LIMIT


@pytest.mark.parametrize(
    "source",
    [
        "Hi {{ profile.attributes.first_name }}!",
        "Hi {{ profile.attributes.first_name | default: 'there' }}!",
        'Hi {{profile.attributes.first_name|default:"you"}} from {{ profile.locale }}',
        "{{ context.order.id }} / {{ context.missing.deep | default: 'none' }}",
        "{{ profile.attributes.tags }} {{ profile.attributes.tags.size }}",
        "{{ profile.attributes.score }} {{ profile.attributes.vip }} {{ profile.attributes.blank_name | default: 'e' }}",
        "{{ profile.attributes.nothing | default: 'n' }}{{ profile.attributes.flag | default: 'f' }}",
        "{% if profile.attributes.vip %}VIP {% endif %}{{ profile.external_id | upcase }}",
    ],
)
@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"first_name": "Zoé", "tags": ["a", "b"], "score": 0, "vip": True, "blank_name": "", "nothing": None},
        {"first_name": "", "tags": [], "score": 2.5, "vip": False, "flag": False},
    ],
)
def test_short_rendering_path_matches_liquid(source, attributes):
    from delivery.personalization import _parse

    profile = {"external_id": "u-1", "locale": "fr", "attributes": attributes}
    context = {"order": {"id": "A7"}}
    assert template_render(source, profile=profile, context=context) == _parse(source).render(
        profile=profile, context=context
    )


def test_fcm_size_shortcut_agrees_with_the_exact_size():
    from delivery.payloads import FCM_LIMIT, fcm_payload_bytes, fcm_payload_fits

    small = fcm_message(spec(), message_render(spec(), profile={}, context={}), token="t", delivery_id=1)
    assert fcm_payload_fits(small) is None
    big_spec = spec(body="é" * 2100)
    big = fcm_message(big_spec, message_render(big_spec, profile={}, context={}), token="t", delivery_id=1)
    assert fcm_payload_bytes(big) > FCM_LIMIT
    assert fcm_payload_fits(big) == fcm_payload_bytes(big)
    quoted_spec = spec(body='"' * 1500)
    near = fcm_message(quoted_spec, message_render(quoted_spec, profile={}, context={}), token="t", delivery_id=1)
    assert fcm_payload_fits(near) is None and fcm_payload_bytes(near) <= FCM_LIMIT


@pytest.mark.parametrize(
    ("source", "gaps"),
    [
        ("Order {{ context.order_id }} is on its way", ["{{ context.order_id }}"]),
        ("{% echo context.code %}", ["{% echo context.code %}"]),
        ("{{ 'Hi ' | append: context.name }}", ["{{ 'Hi ' | append: context.name }}"]),
        ("{{ context.campaign.name }} {{ context.campaign.id }}", []),  # every send gives these
        ("{{ context.campaign.owner }}", ["{{ context.campaign.owner }}"]),
        ("In {{ context.category | default: 'the shop' }}", []),
        ("{% if context.code %}Code {{ context.code }}{% endif %}", []),
        ("{% if context.order %}{{ context.order.id }}{% endif %}{{ context.order.id }}", ["{{ context.order.id }}"]),
        ("{% if profile.attributes.vip %}{{ context.code }}{% endif %}", ["{{ context.code }}"]),
        ("{% if context %}{{ context.code }}{% endif %}", ["{{ context.code }}"]),
        ("{% for item in context.items %}{{ item }}{% endfor %}", []),
        ("{{ profile.attributes.first_name }}", []),
    ],
)
def test_the_outputs_a_send_without_a_call_context_shows_empty_are_found(source, gaps):
    from delivery.personalization import template_context_gaps

    assert template_context_gaps(source, given={"campaign": {"id": 0, "name": ""}}) == gaps


# --- rules a content meets when it is written ------------------------------------------------------


@pytest.fixture
def shop(manager_alice):
    from accounts.services import access_grant
    from tests.factories import AppFactory

    app = AppFactory(name="Shop")
    access_grant(obj=app, to=manager_alice, by=None)
    return app


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"image_url": "https://"}, "image_url", "needs a host"),
        ({"image_url": "https:cdn.example/a.png"}, "image_url", "needs a host"),
        ({"image_url": "https:///a.png"}, "image_url", "needs a host"),
        ({"image_url": "https://cdn.example/spring sale.png"}, "image_url", "%20"),
        ({"image_url": " https://cdn.example/a.png"}, "image_url", "%20"),
        ({"image_url": "https://cdn.example/a.png\n"}, "image_url", "%20"),
        ({"tap_action": "url", "tap_url": "https:/shop.example"}, "tap_url", "needs a host"),
        ({"tap_action": "url", "tap_url": "https://shop.example/\t{{ context.a }}"}, "tap_url", "%20"),
        ({"tap_action": "deep_link", "tap_url": "pushdesk:"}, "tap_url", "Nothing follows"),
        ({"variants": {"fr": {"image_url": "https://cdn.example/soldes d'été.png"}}}, "variants.fr.image_url", "%20"),
        ({"variants": {"fr": {"title": "Salut"}, "FR": {"title": "Bonjour"}}}, "variants", "same locale"),
        ({"variants": {"fr_CA": {"title": "Allô"}, "fr-ca": {"title": "Salut"}}}, "variants", "same locale"),
        ({"variants": {"EN": {"title": "Hi"}}}, "variants", "default locale"),
        ({"default_locale": "english!"}, "default_locale", "not a locale"),
        # Liquid is rendered in the texts, URLs and custom data only: elsewhere it would go out as written.
        ({"ios_thread_id": "order-{{ context.order }}"}, "ios.thread_id", "not rendered here"),
        ({"ios_sound": "{% if profile.locale == 'fr' %}coq.caf{% endif %}"}, "ios.sound", "not rendered here"),
        ({"ios_category": "{{ context.kind }}"}, "ios.category", "not rendered here"),
        ({"android_channel_id": "{{ profile.attributes.channel }}"}, "android.channel_id", "not rendered here"),
        ({"android_icon": "{{ context.icon }}"}, "android.icon", "not rendered here"),
        ({"collapse_key": "order-{{ context.order }}"}, "collapse_key", "not rendered here"),
        # A whole object renders as its every field, written as Python would: to the lock screen.
        ({"body": "Hi {{ profile.attributes }}"}, "body", "{{ profile.attributes }} shows every attribute"),
        ({"title": "{{profile|default:'you'}}"}, "title", "shows every attribute"),
        ({"variants": {"fr": {"body": "{% echo context %}"}}}, "variants.fr.body", "{% echo context %}"),
        ({"data": {"profile": "{{ profile.attributes }}"}}, "data.profile", "shows every attribute"),
    ],
)
@pytest.mark.django_db
def test_content_a_phone_would_misread_is_refused_on_save_naming_the_field(shop, manager_alice, fields, field, message):
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save

    content = PushContent(app=shop, name="Sale", **{"title": "Hi", "body": "Spring sale", **fields})
    with pytest.raises(ValidationError) as exc:
        pushcontent_save(content=content, by=manager_alice)
    assert any(message in m for m in errors_of(exc)[field]), errors_of(exc)
    assert not PushContent.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"image_url": "https://{{ profile.attributes.cdn }}/a.png"},
        {"image_url": "https://cdn.example/{% if profile.locale == 'fr' %}fr{% else %}en{% endif %}.png"},
        {"tap_action": "deep_link", "tap_url": "pushdesk://orders/{{ context.order | default: 'all' }}"},
        {"tap_action": "deep_link", "tap_url": "pushdesk:orders"},
        {"tap_action": "open_app", "tap_url": "not a url, not used"},
        {"variants": {"en-GB": {"title": "Colour"}, "fr": {"title": "Couleur"}}},
        {"default_locale": "pt_BR"},
        {"subtitle": "{{ profile.attributes.name }}: {{ profile.attributes | size }} fields, {{ context.order }}"},
    ],
)
@pytest.mark.django_db
def test_well_formed_urls_and_locales_are_saved(shop, manager_alice, fields):
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save

    pushcontent_save(
        content=PushContent(app=shop, name="Sale", title="Hi", body="Spring sale", **fields), by=manager_alice
    )
    assert PushContent.objects.get().version == 1


@pytest.mark.django_db
def test_content_saved_before_the_authoring_rules_still_sends(shop, manager_alice, django_capture_on_commit_callbacks):
    """The rules that keep a phone from misreading a link are asked when content is written, not when
    an approved send starts: content saved before them still goes out as it was approved."""
    from delivery.models import Dispatch, PushContent
    from delivery.services.contents import pushcontent_test_send
    from tests.factories import DeviceFactory

    content = PushContent.objects.create(
        app=shop, name="Old", title="Hi", body="Body", image_url="https://cdn.example/a b.png", variants={"EN": {}}
    )
    DeviceFactory(app=shop, is_test=True)
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = pushcontent_test_send(content_id=content.pk, by=manager_alice)
    assert Dispatch.objects.get(pk=dispatch.pk).content_spec["image_url"] == "https://cdn.example/a b.png"


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("Hi {{ profile.attributes.name | upcase: 1 }}", 1, "The filter 'upcase' takes no argument, not 1"),
        ("Hi\n{{ profile.attributes.name | append }}", 2, "The filter 'append' takes 1 argument, not none"),
        ("{% if context.total %}{{ context.total | times: }}{% endif %}", 1, "'times' takes 1 argument, not none"),
        ("{% assign d = profile.attributes.seen | date %}{{ d }}", 1, "The filter 'date' takes 1 argument, not none"),
        ("{{ context.name | replace: 'a', 'b', 'c' }}", 1, "The filter 'replace' takes 1 to 2 arguments, not 3"),
        ("{{ profile.attributes.n | default: 'x', allow: true }}", 1, "The filter 'default' has no argument 'allow'"),
    ],
)
def test_a_filter_given_arguments_it_does_not_take_is_refused_on_save_whatever_the_profile(source, line, message):
    """Wrong for every value: each message would fail at send time, the profile's value or not."""
    with pytest.raises(ValidationError) as exc:
        template_check(source, field="body")
    (said,) = errors_of(exc)["body"]
    assert message in said and f"(line {line})" in said, said


def test_filters_given_the_arguments_they_take_are_saved():
    template_check(
        "{{ profile.attributes.n | default: 'x', allow_false: true | append: '!' | truncate: 20, '…' }}"
        "{{ context.when | date: '%Y' }}{{ context.name | replace: 'a', 'b' | replace: 'c' | upcase }}"
        "{{ context.items | join | size }}{{ context.items | join: ', ' }}",
        field="body",
    )


@pytest.mark.parametrize(
    "image_url",
    [
        "http://127.0.0.1:8000/static/delivery/demo/flash-sale.jpg",
        "http://localhost:8000/static/a.png",
        "http://[::1]/a.png",
        "http://LOCALHOST/{{ profile.locale }}.png",
    ],
)
@pytest.mark.django_db
def test_an_image_over_http_on_this_machine_is_saved_for_an_app_that_sends_to_the_simulator(
    shop, manager_alice, image_url
):
    """The push simulator's phones and the admin's previews are on this machine: an image it serves
    itself (as `make run`'s demo does, offline) is saved for an app that sends to the simulator,
    and sends."""
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save

    shop.uses_simulator = True
    shop.save(update_fields=["uses_simulator"])
    content = PushContent(app=shop, name="Sale", title="Hi", body="Spring sale", image_url=image_url)
    pushcontent_save(content=content, by=manager_alice)
    assert PushContent.objects.get().image_url == image_url
    spec_validate(content.spec())


@pytest.mark.parametrize(
    ("image_url", "simulator", "message"),
    [
        ("http://127.0.0.1:8000/a.png", False, "only for an app that sends to the push simulator"),
        ("http://localhost/a.png", False, "only for an app that sends to the push simulator"),
        ("http://cdn.example/a.png", True, "URL scheme 'http' is not allowed"),
        ("http://localhost.cdn.example/a.png", True, "URL scheme 'http' is not allowed"),
        ("http://127.0.0.1.cdn.example/a.png", True, "URL scheme 'http' is not allowed"),
        ("http://{{ context.host }}/a.png", True, "URL scheme 'http' is not allowed"),
    ],
)
@pytest.mark.django_db
def test_an_image_over_http_elsewhere_or_for_phones_is_refused_on_save(
    shop, manager_alice, image_url, simulator, message
):
    """A phone loads images over https: http stays refused for any other host, and on this machine
    for an app that sends to Apple and Google (a phone's own machine is no image server)."""
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save

    shop.uses_simulator = simulator
    shop.save(update_fields=["uses_simulator"])
    content = PushContent(app=shop, name="Sale", title="Hi", body="Spring sale", image_url=image_url)
    with pytest.raises(ValidationError) as exc:
        pushcontent_save(content=content, by=manager_alice)
    assert any(message in m for m in errors_of(exc)["image_url"]), errors_of(exc)
    assert not PushContent.objects.exists()


def test_a_content_reads_a_context_value_by_its_path():
    """Whether a content shows a context value (``context.campaign.name``): read by its path, by a
    key given as a string, further down it, or through what holds it (``context.campaign`` assigned,
    ``context`` looped over) or a key computed when rendered; not a sibling's path."""
    name = "context.campaign.name"
    for text in (
        "{{ context.campaign.name }}",
        '{{ context["campaign"].name | upcase }}',
        "{{ context.campaign.name.size }}",
        "{% assign c = context.campaign %}{{ c.name }}",
        "{% for pair in context %}{{ pair }}{% endfor %}",
        "{{ context.campaign[key] }}",
        "{{ broken",  # unreadable: assume it does
    ):
        assert spec_reads({"title": "Hi", "body": text}, name), text
    for text in ("{{ context.campaign.id }}", "{{ context.order | default: '?' }}", "Plain", "{{ profile.locale }}"):
        assert not spec_reads({"title": "Hi", "body": text}, name), text
    assert spec_reads({"title": "Hi", "body": "", "variants": {"fr": {"title": "{{ context.campaign.name }}"}}}, name)
    assert spec_reads({"title": "Hi", "body": "", "data": {"n": "{{ context.campaign.name }}"}}, name)


@pytest.mark.django_db
def test_a_save_names_every_wrong_field_at_once(shop, manager_alice):
    """A variant's locale hid the image URL and the color, and those the body's unknown filter: the
    API and the form were told one stage at a time."""
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save

    content = PushContent(
        app=shop,
        name="Sale",
        title="Hi",
        body="Hi {{ profile.attributes.name | upcasee }}",
        image_url="https://cdn.example/spring sale.png",
        android_color="red",
        variants={"fr!": {"title": "Salut", "body": "Soldes", "image_url": "https://cdn.example/fr.png"}},
    )
    with pytest.raises(ValidationError) as exc:
        pushcontent_save(content=content, by=manager_alice)
    assert set(errors_of(exc)) == {"body", "image_url", "android.color", "variants"}
    assert not PushContent.objects.exists()


# --- one answer, each error once ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"body": "Hi {{ profile.attributes.name | upcasee }}"}, "body"),
        ({"image_url": "ftp://cdn.example/a.png"}, "image_url"),
        ({"tap_action": "url", "tap_url": ""}, "tap_url"),
        ({"title": "", "body": ""}, "body"),
        ({"body": "ü" * 2100}, "body"),
    ],
)
def test_a_variant_without_its_own_text_leaves_the_default_s_error_said_once(changes, field):
    """A variant's missing texts are the default's: their error is said at the default's field."""
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(**changes, variants={"fr": {"title": "Salut"}, "de": {}}))
    errors = errors_of(exc)
    assert errors[field] and len(set(errors[field])) == len(errors[field])
    assert [f for f in errors if f.startswith("variants")] == []


def test_a_variant_s_own_longer_text_is_measured_beside_the_default_s():
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(body="ü" * 2100, variants={"de": {"body": "ü" * 2200}, "fr": {"title": "Salut"}}))
    errors = errors_of(exc)
    assert "body" in errors and "variants.de" in errors
    assert "variants.fr" not in errors


def test_a_variant_s_own_text_is_checked_at_its_own_field():
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(variants={"fr": {"body": "Salut {{ profile.attributes.name | upcasee }}"}}))
    assert list(errors_of(exc)) == ["variants.fr.body"]


def test_a_variant_s_own_url_is_checked_when_written():
    from delivery.payloads import spec_authoring_check

    with pytest.raises(ValidationError) as exc:
        spec_authoring_check(spec(image_url="https://cdn.example/a b.png", variants={"fr": {"title": "Salut"}}))
    assert list(errors_of(exc)) == ["image_url"]
    with pytest.raises(ValidationError) as exc:
        spec_authoring_check(spec(variants={"fr": {"image_url": "https://cdn.example/a b.png"}}))
    assert list(errors_of(exc)) == ["variants.fr.image_url"]


def test_the_payload_size_is_said_with_the_other_errors():
    """The marketer sees the size beside the color, not after fixing the color."""
    bad = spec(body="ü" * 2100, android={"channel_id": "", "icon": "", "color": "red", "priority": "high"})
    with pytest.raises(ValidationError) as exc:
        spec_validate(bad)
    errors = errors_of(exc)
    assert "android.color" in errors
    assert any("over the 4,096-byte limit" in m for m in errors["body"])


def test_a_text_that_does_not_parse_is_measured_by_its_letters_beside_its_error():
    with pytest.raises(ValidationError) as exc:
        spec_validate(spec(body="ü" * 2100 + "{{ profile.attributes.name", ttl_seconds="soon", data={"k": 5}))
    errors = errors_of(exc)
    assert any("expected '}}'" in m for m in errors["body"])
    assert any("over the 4,096-byte limit" in m for m in errors["body"])
    assert "ttl_seconds" in errors


def test_now_renders_as_an_aware_time_in_its_zone():
    import datetime as dt
    from zoneinfo import ZoneInfo

    from delivery.personalization import rendered_as_of, rendered_in

    source = "{{ 'now' | date: '%Y-%m-%d %H:%M %z' }} {{ 'today' | date: '%Z' }}"
    assert template_render(source, profile={}, context={}).endswith("+0000 UTC")
    with rendered_in(ZoneInfo("Asia/Kolkata")):
        assert template_render(source, profile={}, context={}).endswith("+0530 IST")
    moment = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)
    with rendered_as_of(moment):
        assert template_render(source, profile={}, context={}) == "2026-03-29 00:30 +0000 UTC"
        with rendered_in(ZoneInfo("Europe/Paris")):
            assert template_render(source, profile={}, context={}) == "2026-03-29 01:30 +0100 CET"
