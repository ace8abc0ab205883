"""A tenant's uid (gateway/tenant_files.py): its data folder's owner, never another tenant's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config.settings import SandboxSettings
from gateway.tenant_files import prepare_tenant_dir, tenant_uid

pytestmark = pytest.mark.root

RANGE = SandboxSettings(uid_min=40000, uid_max=40009)


def tenant(tenants: Path, name: str, owner: int | None) -> Path:
    data = tenants / name / "data"
    data.mkdir(parents=True)
    if owner is not None:
        os.chown(data, owner, owner)
    return tenants / name


def test_a_tenant_keeps_its_own_uid_and_a_new_one_gets_the_lowest_free(tmp_path: Path) -> None:
    ann = tenant(tmp_path, "ann", 40000)
    bob = tenant(tmp_path, "bob", None)  # root's: a folder the operator just made
    tenant(tmp_path, ".removed", 40001)  # moved aside: its uid may be given again
    assert tenant_uid(ann, tmp_path, RANGE) == 40000
    assert tenant_uid(bob, tmp_path, RANGE) == 40001


def test_a_copied_folder_does_not_share_the_uid_of_the_one_it_was_copied_from(
        tmp_path: Path) -> None:
    """cp -a of ann's folder as cat's: cat's data folder is owned by ann's uid, and cat must
    not run as ann. Each start takes a uid and chowns the folder to it (Spawner.tenant_user)."""
    ann = tenant(tmp_path, "ann", 40000)
    cat = tenant(tmp_path, "cat", 40000)
    tenant(tmp_path, "dan", 40001)
    uids = []
    for folder in (ann, cat):
        uid = tenant_uid(folder, tmp_path, RANGE)
        prepare_tenant_dir(folder, uid)
        uids.append(uid)
    assert len(set(uids)) == 2 and 40001 not in uids
