"""The GitHub workflows parse, run the README's test command, and call only commands and options that exist."""
from __future__ import annotations

import re
import shlex

import click
import pytest
import yaml
from conftest import REPO

from impeller_bench.cli import main
from impeller_bench.data import published
from impeller_bench.leaderboard import board as leaderboard

WORKFLOWS = REPO / ".github" / "workflows"


def readme_commands() -> tuple[str, str]:
    """The README's two commands: (install and run the main job, install and run the tests)."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    return blocks[0].strip(), blocks[1].strip()


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads a bare `on` as true
    return data


def run_lines(workflow: dict) -> list[str]:
    """Every command line the workflow runs (a step's multi-line ``run`` gives one per line)."""
    return [line.strip() for job in workflow["jobs"].values() for step in job["steps"] if "run" in step
            for line in step["run"].strip().splitlines() if line.strip()]


def resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command an argument list reaches, and the arguments left for it."""
    command, rest = main, list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"impeller-bench has no command {name!r} here"
        command = command.commands[name]
    return command, rest


def check_invocation(line: str) -> None:
    args = shlex.split(line)[1:]
    command, rest = resolve(args)
    assert not isinstance(command, click.Group), f"{line!r} names a group, not a command"
    known = {o for p in command.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    for token in rest:
        if token.startswith("--"):
            assert token.split("=")[0] in known, f"{line!r}: {command.name} has no option {token}"
    # Parsing must also succeed (types aside: the paths exist only on the runner).
    command.make_context(command.name, rest, resilient_parsing=True)


def test_every_workflow_parses_and_runs_on_ubuntu():
    names = sorted(p.name for p in WORKFLOWS.glob("*.yml"))
    assert names == ["leaderboard.yml", "site.yml", "tests.yml"]
    for name in names:
        workflow = load(name)
        assert workflow["jobs"] and all(job["runs-on"].startswith("ubuntu") for job in workflow["jobs"].values())


def test_tests_workflow_runs_the_readme_test_command_like_ci():
    workflow = load("tests.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    _, test_command = readme_commands()
    assert run_lines(workflow) == [test_command]
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_leaderboard_workflow_calls_real_commands_in_order():
    workflow = load("leaderboard.yml")
    assert "leaderboard/**" in workflow["on"]["pull_request_target"]["paths"]
    calls = [line for line in run_lines(workflow) if line.startswith("impeller-bench ")]
    names = [resolve(shlex.split(c)[1:])[0].name for c in calls]
    assert names == ["download"] + ["build-split"] * 4 + ["check-pr"]
    kind = next(line for line in run_lines(workflow) if "--kind" in line)
    check_invocation(re.search(r"\$\((impeller-bench [^)]*)\)", kind).group(1))
    for line in calls:
        check_invocation(line)
    built = {shlex.split(c)[shlex.split(c).index("--split") + 1].replace("$ANN/", "") for c in calls[1:5]}
    # Every split with entries on the board: the current tracks and the deprecated one that keeps its entries.
    on_board = {e["dataset"]["split"] for e in leaderboard.load_entries(REPO / "leaderboard")}
    assert built == {f"{split}.json" for split in on_board | set(published.SPLITS) - {"impeller-v1-kaggle-test"}}


def test_leaderboard_workflow_judges_a_pull_request_with_the_base_code_and_keeps_secrets_from_it():
    workflow = load("leaderboard.yml")
    assert set(workflow["on"]) == {"pull_request_target"}  # the base branch's workflow file, not the request's
    assert workflow["permissions"] == {"contents": "read"}
    (job,) = workflow["jobs"].values()
    assert "env" not in job  # secrets reach one step, not the job
    steps = job["steps"]
    checkouts = [k for k, step in enumerate(steps) if step.get("uses", "").startswith("actions/checkout")]
    base, pr = (steps[k]["with"] for k in checkouts)
    assert base["ref"] == "${{ github.event.pull_request.base.sha }}" and base["path"] == "base"
    assert pr["ref"] == "${{ github.event.pull_request.head.sha }}" and pr["path"] == "pr"
    assert base["persist-credentials"] is False and pr["persist-credentials"] is False
    with_secrets = [k for k, step in enumerate(steps) if "secrets." in str(step)]
    assert len(with_secrets) == 1 and "download" in steps[with_secrets[0]]["run"]
    assert with_secrets[0] < checkouts[1]  # the key is used and gone before the request's files are on the disk
    installs = [step["run"] for step in steps if "pip install" in step.get("run", "")]
    assert installs == ['pip install torch==2.13.0 -e "./base[site]" kaggle']  # only the base code is installed
    assert all(step.get("working-directory") == "base" for step in steps if "impeller-bench" in step.get("run", ""))


def test_site_workflow_checks_the_committed_site_then_publishes_it_from_main():
    workflow = load("site.yml")
    assert workflow["on"]["push"]["branches"] == ["main"] and "leaderboard/**" in workflow["on"]["push"]["paths"]
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    calls = [line for line in run_lines({"jobs": {"build": build}}) if line.startswith("impeller-bench ")]
    for line in calls:
        check_invocation(line)
    names = [resolve(shlex.split(c)[1:])[0].name for c in calls]
    assert names == ["build", "download"] + ["build-split"] * 3 + ["publish"]
    assert "--check" in calls[0]  # a stale committed site stops the job before anything is published
    built = {shlex.split(c)[shlex.split(c).index("--split") + 1] for c in calls[2:5]}
    assert built == {f"annotations/{split}.json" for split in published.SPLITS
                     if published.status(split) != published.DEPRECATED}
    out = shlex.split(calls[-1])[shlex.split(calls[-1]).index("--out") + 1]
    upload = next(step for step in build["steps"] if step.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == out
    assert deploy["needs"] == "build" and deploy["steps"][0]["uses"].startswith("actions/deploy-pages")


@pytest.mark.parametrize("line", ["impeller-bench nonsense", "impeller-bench leaderboard build --chekc"])
def test_the_check_catches_mistakes(line):
    with pytest.raises(AssertionError):
        check_invocation(line)


def test_every_readme_command_exists():
    """Each `impeller-bench ...` line of the README's bash blocks names a real command and real options."""
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)\n```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "impeller-bench":
                    lines.append(shlex.join(words))
    assert len(lines) >= 10
    for line in lines:
        check_invocation(line)
