"""Training and persistence: `jaxce.fit`, `jaxce.fit_ensemble`, `jaxce.save`,
`jaxce.load` and `jaxce.CheckpointError`, re-exported by `jaxce`.

Layering: this package builds on `jaxce.models` and the loss modules; neither
imports it.
"""

from ._checkpoint import CheckpointError as CheckpointError
from ._ensemble import fit_ensemble as fit_ensemble
from ._fit import fit as fit
from ._serialise import load as load, save as save
