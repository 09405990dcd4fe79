"""Names of anomalib's image models, as `method.model.name` accepts them."""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule


class UnknownAnomalibModelError(ValueError):
    """`method.model.name` names no anomalib image model."""


def _snake(name: str) -> str:
    # anomalib's own snake case splits acronyms letter by letter ("anomaly_d_i_n_o"); keep them whole.
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


@cache
def _image_models() -> dict[str, type[AnomalibModule]]:
    import anomalib.models  # noqa: F401  (imports every model, which registers the subclasses)
    from anomalib.models.components import AnomalibModule

    return {
        _snake(cls.__name__): cls
        for cls in AnomalibModule.__subclasses__()
        if cls.__module__.startswith("anomalib.models.image.")
    }


def available_models() -> list[str]:
    """Every anomalib image model by its snake-case name (e.g. `patchcore`, `efficient_ad`, `anomaly_dino`)."""
    return sorted(_image_models())


def model_class(name: str | None) -> type[AnomalibModule]:
    """The anomalib class for a name; case and underscores are ignored (`EfficientAd` = `efficient_ad`)."""
    models = _image_models()
    if name:
        wanted = name.replace("_", "").replace("-", "").lower()
        for key, cls in models.items():
            if wanted in (key.replace("_", ""), cls.__name__.lower()):
                return cls
    raise UnknownAnomalibModelError(
        f"method.model.name={name!r} is not an anomalib image model. Available: {', '.join(sorted(models))}. "
        "Pick one with `method=anomalib model=<name>` (or a preset such as method=patchcore / method=padim)."
    )
