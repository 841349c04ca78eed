"""The floor of each of the project's dependencies (`name>=version` in pyproject.toml, with its environment
marker if it has one) as a pip constraint `name==version`."""
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
for dependency in dependencies:
    floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(; .+)?", dependency)
    if floor is None:
        sys.exit(f"pyproject.toml: dependency {dependency!r} is not of the form name>=version (its floor)")
    print(f"{floor[1]}=={floor[2]}{floor[3] or ''}")
