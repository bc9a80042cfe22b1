"""How every API list is paged."""

from rest_framework.pagination import LimitOffsetPagination


class ApiPagination(LimitOffsetPagination):
    """``?limit=&offset=`` pages of at most 1,000; an offset past any table's size gives an empty page.

    Without the caps a huge ``limit`` or ``offset`` overflows the database's bigint and fails.
    """

    max_limit = 1000
    max_offset = 2**62

    def get_offset(self, request):
        return min(super().get_offset(request), self.max_offset)
