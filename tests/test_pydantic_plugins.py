"""ftctl builds its own pydantic models without pydantic's plugin search (ftctl.pydantic_plugins): the
search reads the entry points of every installed distribution, ~25 ms of every command. What the user
set is left as it was, and models built afterwards still search."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os
import ftctl.config, ftctl.records
import pydantic.plugin._loader as loader
after_ftctl = loader._plugins
import pydantic
class Later(pydantic.BaseModel):
    x: int = 0
seen = {"searched_for_ftctl": after_ftctl is not None, "searched_later": loader._plugins is not None}
print(json.dumps({**seen, "env": os.environ.get("PYDANTIC_DISABLE_PLUGINS")}))
"""


@pytest.mark.parametrize("user_value", [None, "logfire"])
def test_ftctl_models_skip_the_plugin_search_and_leave_the_setting_as_it_was(user_value: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if user_value is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = user_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen == {"searched_for_ftctl": False, "searched_later": True, "env": user_value}
