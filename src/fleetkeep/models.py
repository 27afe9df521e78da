"""Imports every capability's tables so that Alembic and tests see the whole schema."""

from fleetkeep.admins import models as admins_models
from fleetkeep.alerts import models as alerts_models
from fleetkeep.audit import models as audit_models
from fleetkeep.deployment import models as deployment_models  # noqa: F401
from fleetkeep.directories import entra as entra_models  # noqa: F401
from fleetkeep.directories import models as directories_models  # noqa: F401
from fleetkeep.directories.scim import models as scim_models  # noqa: F401
from fleetkeep.identity import models as identity_models
from fleetkeep.jobs import models as jobs_models
from fleetkeep.keys import models as keys_models  # noqa: F401
from fleetkeep.vault import models as vault_models  # noqa: F401

__all__ = ["admins_models", "alerts_models", "audit_models", "identity_models", "jobs_models"]
