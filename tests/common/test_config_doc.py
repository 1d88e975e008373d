"""README's configuration table and .env.example must name every setting the code reads."""

from common.config_doc import BEGIN, END, table, variables
from common.settings import REPO_ROOT


def test_readme_config_table_is_generated_from_the_settings_models():
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == table(), "README config table is stale: run `python -m common.config_doc --write`"


def test_env_example_documents_every_variable():
    env_example = (REPO_ROOT / ".env.example").read_text()
    names = {line.split("=", 1)[0].lstrip("# ").strip() for line in env_example.splitlines() if "=" in line}
    missing = [v.name for v in variables() if v.name not in names]
    assert not missing, f".env.example does not document: {missing}"
