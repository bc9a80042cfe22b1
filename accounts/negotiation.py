"""How the API chooses its answer's format (a module of its own: DRF's settings import it before any view)."""

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation


class ApiContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, with ``?format=`` naming the answer's format among those the view answers
    in: ``json`` (the schema also ``yaml``, an import's error file ``csv``).

    Any other value, an empty one, or the parameter given twice answers 400 naming ``format``: an
    integrator asking ``?format=csv`` is told the API does not answer so, instead of reading JSON
    as if it were what was asked (DRF's own reading, ``URL_FORMAT_OVERRIDE``, is off: it answers
    404 to an unknown format). The ``Accept`` header is matched within the format named, as DRF does.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        values = request.query_params.getlist("format")
        if values:
            if len(values) > 1:
                raise exceptions.ValidationError({"format": "Give one value."}, code="invalid")
            formats = list(dict.fromkeys(renderer.format for renderer in renderers))
            if values[0] not in formats:
                raise exceptions.ValidationError(
                    {"format": f"Unknown value “{values[0]}”; use {', '.join(formats)}."}, code="invalid_choice"
                )
            format_suffix = format_suffix or values[0]
        return super().select_renderer(request, renderers, format_suffix)
