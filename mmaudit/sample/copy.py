"""``mmaudit sample DIR``: write the bundled sample where a user can audit it, from an
installed package as well as from the repository.

The sample (studies, masks, manifest, tokenizer, both trained checkpoints) ships inside the
package (``mmaudit/sample/data``; the repository's ``sample_data`` is a link to it), with its
two audit configs (``mmaudit/sample/configs``) whose paths are relative to the folder they
are written to. Nothing is generated or trained: the copy is byte for byte what the
repository's tests and README figures use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mmaudit.engine.errors import MmauditError

DATA = Path(__file__).resolve().parent / "data"
CONFIGS = Path(__file__).resolve().parent / "configs"


def write_sample(target: Path) -> list[Path]:
    """Copy the sample and its configs into ``target`` (created; it must not exist or be
    empty, so that nothing of the user's is overwritten). Returns the configs written."""
    if not (DATA / "manifest.csv").is_file():
        raise MmauditError(
            f"the bundled sample is missing from this installation ({DATA})",
            hint="reinstall mmaudit from a wheel or the repository",
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MmauditError(
            f"{target} exists and is not an empty folder",
            hint="name a new folder: mmaudit sample DIR writes the sample there",
        )
    shutil.copytree(DATA, target, dirs_exist_ok=True)
    configs = []
    for config in sorted(CONFIGS.glob("*.yaml")):
        shutil.copyfile(config, target / config.name)
        configs.append(target / config.name)
    return configs
