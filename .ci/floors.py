"""The floor of each of the project's dependencies (`name>=version` in pyproject.toml) as a pip constraint
`name==version`; torch is left to the machine's wheel."""
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
for dependency in dependencies:
    name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dependency).groups()
    if name != "torch":
        print(f"{name}=={floor}")
