"""Aim's factory side: options and target, without importing aim."""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..base import DestinationFactory, Option


class AimFactory(DestinationFactory):
    name = "aim"
    extra = "aim"
    vendor_module = "aim"
    client = "tracelet.destinations.aim.client:AimDestination"
    summary = "Aim repo (local folder, default ./.aim) or aim://host:port server"
    options = (
        Option("aim_repo", "--aim-repo", env="AIM_REPO",
               help="Aim repo path or aim://host:port (default AIM_REPO, else ./.aim)."),
    )

    def target(self, config: Mapping[str, Any]) -> str:
        repo = config.get("aim_repo") or os.environ.get("AIM_REPO") or os.path.abspath(".")
        return repo if "://" in repo else os.path.abspath(repo)


FACTORY = AimFactory()
