# Used only with `run_suite.py --vtasks-dev-stub`, and the report says so: a pure-Python stand-in
# for django_vtasks._native's payload codec while the pyo3 extension is not built yet. The
# benchmark payloads are far below the 1 KiB compression threshold, so encode/decode are the
# identity here as in the real codec; the stand-in has no PgQueue (vtasks on Postgres is skipped).
import sys
import types
import zlib

if "django_vtasks._native" not in sys.modules:
    m = types.ModuleType("django_vtasks._native")

    def encode_payload(data, threshold=1024):
        return b"zstd:" + zlib.compress(data) if len(data) > threshold else bytes(data)

    def decode_payload(data):
        data = bytes(data)
        if data.startswith(b"zstd:"):
            try:
                return zlib.decompress(data[5:])
            except zlib.error as e:
                raise ValueError(str(e)) from None
        return data

    m.encode_payload = encode_payload
    m.decode_payload = decode_payload
    m.migrations = lambda: []
    m.BENCH_DEV_STUB = True
    sys.modules["django_vtasks._native"] = m
