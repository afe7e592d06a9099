"""The planner's error tree: every error the planner raises on purpose derives from one root.

    PlannerError
    ├── ConfigError (ValueError)          a setting is missing or invalid; names key, value, fix
    │   ├── AuthError                     a service rejected the token (401/403)
    │   ├── UrlRefusedError               Label Studio's SSRF protection refused a webhook URL
    │   ├── GoneError                     the watched project does not exist (404)
    │   └── StoreSchemaError              the planner database is missing, or at another schema
    ├── InputError (ValueError)           input data the planner cannot use; says what to do
    │   ├── LabelConfigError              a Label Studio label config the planner cannot read
    │   └── AnnotationError               a malformed annotation result (quarantined, never fatal)
    └── TransientError                    worth retrying later (network, service down)
        ├── UnreachableError              no connection (refused, cut, DNS)
        ├── SlowError                     the service did not answer in time
        ├── StoreError                    the planner database is locked or unreachable
        └── IncompleteListingError        a full listing came back short of its total

Each error subclasses the built-in a caller would naturally catch (``ValueError`` for bad
input) so code that predates the planner keeps working.
"""

from __future__ import annotations


class PlannerError(Exception):
    """Root of every error the planner raises on purpose."""


class ConfigError(PlannerError, ValueError):
    """A configuration value is missing or invalid; the message names the key, value and fix."""


class InputError(PlannerError, ValueError):
    """Input data cannot be used as given; the message says what to do about it."""


class LabelConfigError(InputError):
    """A Label Studio label config that defines no class the planner can count."""


class AnnotationError(InputError):
    """A malformed annotation result; callers quarantine the task and go on."""


class TransientError(PlannerError):
    """A failure that may go away on retry (a service down, a timeout)."""


class AuthError(ConfigError):
    """A service rejected the token; a running daemon re-reads its token file and retries."""


class UrlRefusedError(ConfigError):
    """Label Studio refused a URL the planner gave it (its SSRF protection: a loopback or
    private address); not a token problem, so no token is re-read for it."""


class GoneError(ConfigError):
    """The watched project is gone (deleted, or the id is wrong)."""


class StoreSchemaError(ConfigError):
    """A command that only reads found no planner database (a missing SQLite file, no tables)
    or one at another schema revision, or a PostgreSQL session met a table or column that is
    not there (not migrated yet); ``planner run`` creates and migrates it."""


class UnreachableError(TransientError):
    """No connection to the service: refused, cut mid-answer, name not resolved."""


class SlowError(TransientError):
    """The service did not answer within the timeout."""


class StoreError(TransientError):
    """The planner database is locked or unreachable; the transaction was rolled back."""


class IncompleteListingError(TransientError):
    """A listing of every task came back with fewer than the total the server reported; what
    is missing from it is not known to be deleted."""
