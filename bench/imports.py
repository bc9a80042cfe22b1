"""Benchmark: a 1,000,000-row CSV imported end to end, against PostgreSQL COPY of the same file.

    .venv/bin/python bench/imports.py [--rows 1000000]

Uses its own database (``BENCH_IMPORT_DATABASE_URL``, default
postgres://postgres@127.0.0.1:5432/pushdesk_bench_import), emptied before each run. Writes a
CSV of external_id + 10 attribute columns (about 90 MB at a million rows), then, in the same run:

* ``copy``: COPY of the file, streamed from this process, into a bare table of 11 text columns
  (what PostgreSQL can ingest at best);
* ``ceiling``: the SQL ceiling of an import: COPY of the file into a staging table, then one
  ``INSERT … ON CONFLICT DO UPDATE`` of every row (its ten cells as a JSON object) into the
  empty, indexed profiles table, in one transaction; the profiles are removed again afterwards;
* ``ceiling_segment``: the same, then every profile added to a segment in the same transaction
  (one ``INSERT … SELECT``), as the import into a new segment does: the ceiling of the same work;
* ``import``: ``import_create`` (header check, the file stored under MEDIA_ROOT) and the worker's
  ``import_process`` to the end: streamed, parsed, typed, validated row by row, upserted into
  profiles (attributes merged) and added to a new imported segment;
* ``rerun``: the same file imported again (nothing changes: every row is already there).

Prints one JSON line: seconds and rows/s of each, and the ratios import / ceiling and import / COPY.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/pushdesk_bench_import"
os.environ["DATABASE_URL"] = os.environ.get("BENCH_IMPORT_DATABASE_URL", DEFAULT_URL)
os.environ.setdefault("REDIS_URL", "")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
WORK = Path(tempfile.mkdtemp(prefix="pushdesk-bench-import-"))
os.environ["MEDIA_ROOT"] = str(WORK / "media")

HEADER = "external_id,plan,age,country,vip,score,signup_date,city,newsletter,lifetime_value,app_version\n"


def ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def write_csv(path: Path, rows: int) -> int:
    rng = random.Random(7)
    plans = ("free", "free", "free", "pro", "team")
    countries = ("FR", "DE", "GB", "US", "BR", "ES", "IT", "NL")
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER)
        lines = []
        for n in range(rows):
            lines.append(
                f"imp-{n},{plans[n % 5]},{16 + n % 60},{countries[n % 8]},{'true' if n % 10 == 0 else 'false'},"
                f'{rng.randint(0, 1000) / 10},2025-{1 + n % 12:02d}-{1 + n % 28:02d},"City {n % 500}, Region",'
                f"{'true' if n % 3 == 0 else 'false'},{rng.randint(0, 100000) / 100},3.{n % 12}\n"
            )
            if len(lines) == 10000:
                fh.write("".join(lines))
                lines = []
        fh.write("".join(lines))
    return path.stat().st_size


COLUMNS = HEADER.strip().split(",")
CEILING_UPSERT = """
INSERT INTO audiences_profile AS p (external_id, attributes, locale, timezone, created_at, updated_at)
SELECT external_id, jsonb_build_object({cells}), '', '', now(), now() FROM bench_stage
ON CONFLICT (external_id) DO UPDATE SET attributes = p.attributes || EXCLUDED.attributes, updated_at = EXCLUDED.updated_at
"""


CEILING_MEMBERS = """
INSERT INTO audiences_segmentmember (segment_id, profile_id, added_at)
SELECT %s, p.id, now() FROM bench_stage s JOIN audiences_profile p ON p.external_id = s.external_id
ON CONFLICT (segment_id, profile_id) DO NOTHING
"""


def measure_ceiling(connection, csv_path: Path, *, segment_id: int | None = None) -> float:
    """COPY into a staging table and one upsert into the indexed profiles table; the seconds both took.

    With ``segment_id``, the same transaction then adds every profile to that segment, as the
    import into a new segment does (its foreign keys checked at commit). The session gets the
    import's work_mem.
    """
    from django.db import transaction

    cells = ", ".join(f"'{name}', {name}" for name in COLUMNS[1:])
    began = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute("CREATE TEMP TABLE bench_stage (" + ", ".join(f"{c} text" for c in COLUMNS) + ") ON COMMIT DROP")
        with open(csv_path, "rb") as fh:
            with cursor.cursor.copy("COPY bench_stage FROM STDIN (FORMAT csv, HEADER true)") as copy:
                while chunk := fh.read(1 << 20):
                    copy.write(chunk)
        cursor.execute(CEILING_UPSERT.format(cells=cells))
        if segment_id is not None:
            cursor.execute("ANALYZE bench_stage")
            cursor.execute(CEILING_MEMBERS, [segment_id])
    seconds = time.perf_counter() - began
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE audiences_segmentmember, audiences_profile CASCADE")
        cursor.execute("CHECKPOINT")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.files import File
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import User
    from audiences.models import Import, Segment
    from audiences.services.imports import import_create, import_process

    call_command("migrate", verbosity=0, interactive=False)
    csv_path = WORK / "profiles.csv"
    started = time.perf_counter()
    size = write_csv(csv_path, args.rows)
    print(f"wrote {args.rows:,} rows ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_copy")
        cursor.execute("CREATE TABLE bench_copy (" + ", ".join(f"c{i} text" for i in range(11)) + ")")
        cursor.execute(
            "TRUNCATE audiences_segmentmember, audiences_event, audiences_profile, audiences_segment, "
            "audiences_import RESTART IDENTITY CASCADE"
        )
        cursor.execute("CHECKPOINT")
    started = time.perf_counter()
    with connection.cursor() as cursor, open(csv_path, "rb") as fh:
        with cursor.cursor.copy("COPY bench_copy FROM STDIN (FORMAT csv, HEADER true)") as copy:
            while chunk := fh.read(1 << 20):
                copy.write(chunk)
    copy_s = time.perf_counter() - started
    ceiling_s = measure_ceiling(connection, csv_path)
    user, _ = User.objects.get_or_create(username="bench", defaults={"is_superuser": True, "is_staff": True})
    ceiling_segment = Segment.objects.create(name="bench ceiling", kind=Segment.Kind.IMPORTED, created_by=user)
    ceiling_segment_s = measure_ceiling(connection, csv_path, segment_id=ceiling_segment.pk)

    def run_import(name: str) -> tuple[float, Import]:
        from django.db import transaction

        began = time.perf_counter()
        with open(csv_path, "rb") as fh:
            upload = File(fh, name="profiles.csv")
            upload.size = size
            with transaction.atomic():
                record = import_create(upload=upload, by=user, target="new_segment", segment_name=name)
        # import_create queued the task; run the worker's part here, as one worker would.
        while import_process(import_id=record.pk, seconds=10_000):
            pass
        record.refresh_from_db()
        return time.perf_counter() - began, record

    import_s, first = run_import("bench import")
    rerun_s, second = run_import("bench import again")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audiences_profile")
        profiles = cursor.fetchone()[0]
        cursor.execute("DROP TABLE bench_copy")
    result = {
        "benchmark": "imports",
        "rows": args.rows,
        "file_mb": round(size / 1e6, 1),
        "copy_s": round(copy_s, 2),
        "copy_rows_per_s": round(args.rows / copy_s),
        "import_s": round(import_s, 2),
        "import_rows_per_s": round(args.rows / import_s),
        "ceiling_s": round(ceiling_s, 2),
        "ceiling_rows_per_s": round(args.rows / ceiling_s),
        "ratio_to_ceiling": round(ceiling_s / import_s, 3),
        "ceiling_segment_s": round(ceiling_segment_s, 2),
        "ceiling_segment_rows_per_s": round(args.rows / ceiling_segment_s),
        "ratio_to_ceiling_segment": round(ceiling_segment_s / import_s, 3),
        "ratio_to_copy": round(copy_s / import_s, 3),
        "rerun_s": round(rerun_s, 2),
        "rerun_rows_per_s": round(args.rows / rerun_s),
        "imported": first.rows_imported,
        "failed": first.rows_failed,
        "status": [first.status, second.status],
        "profiles": profiles,
        "goal": ">= 100000 rows/s and >= 0.5 of the ceiling's rate",
        "met": args.rows / import_s >= 100_000 and ceiling_s / import_s >= 0.5,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
