"""An admin page's form read as a browser would post it, for tests that post a page back; and the
approval request's reads a page makes."""

from html.parser import HTMLParser

from django.db import connection
from django.test.utils import CaptureQueriesContext


def get_reading_approval_requests(client, url):
    """GET ``url``: the response, and the SQL of each reading of an object's approval request (its
    latest first, as ``approval_current`` reads it) the page made."""
    with CaptureQueriesContext(connection) as queries:
        page = client.get(url)
    reads = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('SELECT "accounts_approvalrequest"')
        and 'ORDER BY "accounts_approvalrequest"."requested_at" DESC' in q["sql"]
    ]
    return page, reads


class PageForm(HTMLParser):
    """The form of an admin page as a browser would post it: every named field's value, and which
    of them are number inputs."""

    def __init__(self):
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self.numbers: set[str] = set()
        self.texts: set[str] = set()
        self._select = None
        self._textarea = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        name = attrs.get("name")
        if tag == "input" and name:
            kind = attrs.get("type", "text")
            if kind in ("submit", "button", "file", "image"):
                return
            if kind in ("checkbox", "radio") and "checked" not in attrs:
                return
            self.data.setdefault(name, []).append(attrs.get("value", "on" if kind == "checkbox" else ""))
            if kind == "number":
                self.numbers.add(name)
            elif kind in ("text", "url", "email", "search") and "__prefix__" not in name:
                self.texts.add(name)
        elif tag == "select" and name:
            self._select = name
            self.data.setdefault(name, [])
        elif tag == "option" and self._select and "selected" in attrs:
            self.data[self._select].append(attrs.get("value", ""))
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = [""]
            if "__prefix__" not in name:
                self.texts.add(name)

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea][0] += data

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def page_form(html: str) -> PageForm:
    """The form of the page ``html``, read."""
    form = PageForm()
    form.feed(html)
    return form


def form_token_of(html: str | bytes) -> str:
    """The one-time token a page's form carries (``accounts.form_tokens``), as a browser posts it back."""
    import re

    text = html.decode() if isinstance(html, bytes) else html
    found = re.search(r'name="form_token" value="([^"]+)"', text) or re.search(
        r'value="([^"]+)" name="form_token"', text
    )
    assert found, "the page's form carries no one-time token"
    return found.group(1)


def listed_rows(client, path: str, *, sorted_by: str | None = None, query: dict | None = None) -> list:
    """The rows of an admin list as ``client``'s user reads it; ``sorted_by``: a column of the
    list (``list_display``) it is asked to sort by (``?o=``), as a click on its heading does."""
    page = client.get(path, query or {})
    if sorted_by is not None:
        column = list(page.context["cl"].list_display).index(sorted_by)
        page = client.get(path, {**(query or {}), "o": str(column)})
    return list(page.context["cl"].result_list)


def review_post_confirmed(client, url: str, data: dict, **kwargs):
    """POST ``data`` to an approval's review (``url``) and, when it answers with the confirmation an
    approval starting a send at once asks for, press its Yes: its form posted back as a browser
    would. The answer of the last POST."""
    answer = client.post(url, data, **kwargs)
    html = answer.content.decode()
    if answer.status_code != 200 or 'id="send-confirmation"' not in html:
        return answer
    form = html[html.index('id="send-confirmation"') : html.index("</form>", html.index('id="send-confirmation"'))]
    fields = {
        name: values if len(values) > 1 else values[0] for name, values in page_form(f"<form {form}").data.items()
    }
    fields.pop("csrfmiddlewaretoken", None)
    return client.post(url, {**fields, "_send_confirmed": "Yes, approve and send now"}, **kwargs)
