"""The one error root: every failure kerbside reports on purpose is a KerbsideError.

Why one root: the CLI catches KerbsideError once and prints its message (no
traceback) with exit status 1; anything else is a bug and keeps its traceback.
Library users (a notebook, a city's own service) can do the same with one
`except`. Subclasses also keep a builtin base where callers relied on it
(ValueError for bad input, LookupError for missing data, OSError for I/O).

The tree (docs/errors.md lists every subclass and who raises it):

    KerbsideError
    ├── ConfigError        settings, files and flags the user fixes (ValueError)
    ├── ContractError      a payload breaks the wire contract (reason code attached)
    ├── InfluxError        InfluxDB refused or could not be reached
    ├── StorageError       the collector's own disk: spool, dead letters, state (OSError)
    ├── DeviceError        a board on USB: ports, flashing, raw REPL, self-test
    ├── ProvisioningError  identity, bundle, registry edits, broker files, PKI
    ├── AnalysisError      queries, reports, exports, time ranges
    └── ServiceError       the development stack's own processes
"""

from __future__ import annotations


class KerbsideError(Exception):
    """Root of every error kerbside raises on purpose; the message is written for the user."""
