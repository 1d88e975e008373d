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
    known = {v.name for v in variables()}
    missing = sorted(known - names)
    assert not missing, f".env.example does not document: {missing}"
    # a service-prefixed name that neither a settings model nor docker-compose.yml reads any more
    # is a stale line (a removed setting)
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    stale = sorted(n for n in names - known if n.startswith(("GATEWAY_", "RETRIEVAL_", "RANKING_", "FEAST_"))
                   and "${" + n not in compose)
    assert not stale, f".env.example documents settings the code does not read: {stale}"
