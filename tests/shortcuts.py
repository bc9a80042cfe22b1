"""The API's shortcuts for usual bodies (``_event_validated``, ``_trigger_validated``) against the
serializers they stand in for."""

from rest_framework.exceptions import ValidationError as DrfValidationError


def assert_shortcut_agrees(shortcut, serializer, value, *, plain=lambda validated: validated) -> None:
    """The shortcut accepts nothing the serializer refuses and returns what it returns (``plain``
    turns the serializer's validated data into plain dicts); it may leave any value to it (None)."""
    try:
        expected = plain(serializer().run_validation(value))
    except DrfValidationError:
        expected = None
    taken = shortcut(value)
    assert taken is None or taken == expected
    if expected is None:
        assert taken is None
