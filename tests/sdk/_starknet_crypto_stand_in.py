"""Stands in for ``starknet_crypto_py`` when it is not installed, so that paradex-py imports.

paradex-py 0.8.2 imports ``starknet_crypto_py`` (Rust Stark-curve signing) at import time, from
``paradex_py/account/utils.py``, which every client module reaches (``api/ws_client.py`` and ``api/api_client.py``
import ``account/account.py``). It has no wheel for this platform and its source build needs the Rust crate registry
(see ``paradex-requirements.txt``). The fidelity check never signs, so a module whose functions refuse to run is
enough. Importing this module puts it in ``sys.modules``; when the real one is installed, this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import NoReturn

NAME = "starknet_crypto_py"
FUNCTIONS = ("get_public_key", "pedersen_hash", "sign", "verify")


def _refuse(*_args: object, **_kwargs: object) -> NoReturn:
    raise RuntimeError(f"{NAME} is not installed in this environment: Stark signing is unavailable")


def install() -> bool:
    """Put the stand-in in place unless the real module can be imported; whether it was put in place."""
    if NAME in sys.modules or importlib.util.find_spec(NAME) is not None:
        return False
    module = types.ModuleType(
        NAME, "stand-in: Stark signing is unavailable (see tests/sdk/_starknet_crypto_stand_in.py)"
    )
    for function in FUNCTIONS:
        setattr(module, function, _refuse)
    sys.modules[NAME] = module
    return True


INSTALLED = install()
