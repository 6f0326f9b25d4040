"""The one error root: every failure kerbside reports on purpose is a KerbsideError.

Why one root: the `kerbside` command catches KerbsideError once and prints its
message (no traceback) with the class's exit status; anything else is a bug and
keeps its traceback. Library users (a notebook, a city's own service) can do the
same with one `except`. Subclasses also keep a builtin base where callers rely on
it (ValueError for bad input, LookupError for missing data, OSError for files).

The tree (docs/errors.md lists every subclass and who raises it):

    KerbsideError          exit 1
    ├── ConfigError        exit 2  settings, flags and input files the user fixes; nothing was changed (ValueError)
    ├── ContractError              a payload breaks the wire contract (reason code attached)
    ├── InfluxError        exit 2  InfluxDB refused or could not be reached (kerbside.core.influx)
    │   ├── InfluxDown                 unreachable, 5xx, 408/429: keep the data and retry
    │   │   └── InfluxAuthError        credentials missing or lacking rights
    │   └── InfluxRefused              these bytes or this query will never be accepted (4xx, InfluxQL error)
    ├── StorageError               files kerbside keeps: spool, dead letters, sequence state, atomic writes (OSError)
    ├── DeviceError                a board on USB: ports, flashing, raw REPL, self-test
    ├── ProvisioningError          identities, firmware bundle, fleet edits, password hashes
    ├── AnalysisError      exit 2  queries, reports, exports and time ranges an analyst asked for
    ├── ServiceError               the development stack's own processes (mosquitto, influxd)
    └── SimulatorSignal            not a failure: the simulator's machine.reset()

Exit status 2 means "what you asked for cannot work as given: fix the input and
run again"; 1 means "it ran and failed". A class may override `exit_code`.
"""

from __future__ import annotations


class KerbsideError(Exception):
    """Root of every error kerbside raises on purpose; the message is written for the user."""

    exit_code = 1


class ConfigError(KerbsideError, ValueError):
    """Settings (file, environment, flags) or an input file the user fixes; the message says where."""

    exit_code = 2


class ContractError(KerbsideError):
    """A message breaks the wire contract (docs/wire); it carries a stable reason code."""


class InfluxError(KerbsideError):
    """InfluxDB refused a request or could not be reached; subclasses in kerbside.core.influx.

    Exit 2: a command that stops on it (db init, report, gaps scan) needs a different --influx/--db or a
    running server. The collector never stops on it: it spools and retries."""

    exit_code = 2


class StorageError(KerbsideError, OSError):
    """A file kerbside keeps (spool, dead letters, sequence state, an atomic write) cannot be used."""


class DeviceError(KerbsideError):
    """A board on USB: finding its port, flashing it, its raw REPL, its self-test."""


class ProvisioningError(KerbsideError):
    """Identities, the firmware bundle, registry edits, password hashes."""


class AnalysisError(KerbsideError):
    """A query, report, export or time range an analyst asked for cannot be answered as asked."""

    exit_code = 2


class ServiceError(KerbsideError):
    """A process of the development stack (mosquitto, influxd) is missing or did not come up."""


class SimulatorSignal(KerbsideError):
    """Control flow of the simulator, not a failure: under the root so nothing kerbside raises escapes it."""
