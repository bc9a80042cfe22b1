"""How pages and forms name an object their reader may not see: by kind and number, never by name.

Each page that names what an object uses asks which of those names its reader may see
(``accounts.selectors.visible_named``, ``with_reader_sees``) and names the others with these, so
that the wording is one: "segment #12" on a page, "a segment you have no access to (#12)" among a
form's choices.
"""


def numbered(kind: str, pk) -> str:
    """How a page names an object its reader may not see: by kind and number, unlinked
    ("segment #12", "app #3", "content #7")."""
    return f"{kind} #{pk}"


def no_access(kind: str, pk) -> str:
    """How a form offers a choice its reader may not see, kept as a colleague made it: "a segment
    you have no access to (#12)"."""
    article = "an" if kind and kind[0] in "aeiou" else "a"
    return f"{article} {kind} you have no access to (#{pk})"
