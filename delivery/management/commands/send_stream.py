"""``manage.py send_stream``: a stream sender in a process of its own (see ``delivery.services.stream_senders``)."""

import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.digits import command_number
from config.runtime import gc_tune
from delivery.services.stream_senders import streams_sender_run
from operations.shutdown import request_stop

log = logging.getLogger("pushdesk.sender")


# A typo in a unit must not start another slot's sender beside the one meant to.
_slot = command_number("slot", give="0 to PUSHDESK_STREAM_SENDERS - 1")


class Command(BaseCommand):
    help = (
        "Send the rows API triggers and event-entered journeys append to their streams, as they come, "
        "until SIGTERM or SIGINT (the batch in flight is finished first)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--slot",
            type=_slot,
            default=0,
            help="which of the PUSHDESK_STREAM_SENDERS senders this is (0 to PUSHDESK_STREAM_SENDERS - 1)",
        )

    def handle(self, *args, slot: int, **options):
        if not 0 <= slot < settings.PUSHDESK_STREAM_SENDERS:
            raise CommandError(
                f"--slot {slot} is not one of the {settings.PUSHDESK_STREAM_SENDERS} sender slots "
                f"(PUSHDESK_STREAM_SENDERS): use 0 to {settings.PUSHDESK_STREAM_SENDERS - 1}."
            )

        def on_signal(signum, frame):
            request_stop()  # only a flag: the sender sees it between batches and while it waits

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("stream sender %s started", slot)
        gc_tune()
        report = streams_sender_run(slot=slot)
        log.info("stream sender %s stopped after sending %s rows", slot, report.claimed)
        self.stdout.write(f"Stream sender {slot} stopped: {report.claimed} rows in {report.batches} batches.")
