"""Shared by the end-to-end tests: borgmatic runs, archive listings, IMAP comparison."""

import json
import os
import shutil
import subprocess

import yaml

from borg_cyrus.tools import demo
from borg_cyrus.cyrus import imapview
from support.common import env, write_config

USERS = demo.USERS
QUOTA_ROOTS = demo.QUOTA_ROOTS


def borgmatic_config(base, repo, patterns_file=None):
    """The shipped sample-borgmatic.yaml with only the repository changed
    (and the patterns path when a test uses its own work directory)."""
    return write_config(os.path.join(base, "borgmatic.yaml"), demo.sample_borgmatic_config(repo, patterns_file))


def borgmatic(cfg, *args, bc_config=None, check=True, extra_env=None):
    e = env({**({"BORG_CYRUS_CONFIG": bc_config} if bc_config else {}), **(extra_env or {})})
    r = subprocess.run(["borgmatic", "-c", cfg, *args], capture_output=True, text=True, env=e)
    if check and r.returncode:
        raise AssertionError(f"borgmatic {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def init_repo(cfg):
    borgmatic(cfg, "repo-create", "--encryption", "none")


def latest_archive(repo):
    out = subprocess.run(["borg", "list", "--json", repo], capture_output=True, text=True, env=env(), check=True).stdout
    return json.loads(out)["archives"][-1]["name"]


def archive_paths(repo, archive=None):
    archive = archive or latest_archive(repo)
    out = subprocess.run(
        ["borg", "list", "--format", "{path}{NL}", f"{repo}::{archive}"],
        capture_output=True,
        text=True,
        env=env(),
        check=True,
    ).stdout
    return {"/" + p for p in out.splitlines()}


def extract(repo, archive=None, cwd="/", paths=()):
    archive = archive or latest_archive(repo)
    subprocess.run(
        ["borg", "extract", f"{repo}::{archive}", *[p.lstrip("/") for p in paths]],
        cwd=cwd,
        env=env(),
        check=True,
        capture_output=True,
    )


def wipe(sb):
    """Everything of the server goes, as on a machine rebuilt from scratch
    (the directory that held it stays, like /var/lib on a new install)."""
    sb.stop()
    for name in os.listdir(sb.base):
        p = os.path.join(sb.base, name)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)


def snapshot(sb):
    return imapview.snapshot(sb, USERS, QUOTA_ROOTS)


def expected(before, manifest):
    return demo.expected_after_restore(before, demo.excluded_names(manifest))


def load_manifest(work):
    with open(os.path.join(work, "dump", "manifest.json")) as f:
        return json.load(f)


def read_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)
