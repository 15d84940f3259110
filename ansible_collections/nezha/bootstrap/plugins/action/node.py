# Copyright: nezha-bootstrap contributors
# MIT License (see LICENSE at the repository's root)
"""The controller's half of nezha.bootstrap.node: put the zipapp `pyz` on the host, then run the module."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.nezha.bootstrap.plugins.module_utils.tool import DEFAULT_PYZ_DEST, sha256_of


class ActionModule(ActionBase):
    """Hash the zipapp on the controller (against `pyz_sha256` when pinned), copy it to the host only
    when the host's copy at `pyz_dest` has another hash, and hand the module the hash it must check
    again on the host before running the file."""

    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp  # ActionBase makes the remote temporary directory itself
        args = dict(self._task.args)
        try:
            if args.get("pyz"):
                args.update(self._zipapp_args(args, task_vars))
                args = dict((key, value) for key, value in args.items() if value is not None)
            result.update(self._execute_module(module_name="nezha.bootstrap.node", module_args=args,
                                               task_vars=task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _zipapp_args(self, args, task_vars):
        local = self._find_needle("files", args["pyz"])
        digest = sha256_of(local)
        pinned = (args.get("pyz_sha256") or "").strip().lower()
        if pinned and pinned != digest:
            raise AnsibleActionFail("%s has SHA-256 %s, not the pinned pyz_sha256 %s: refusing to copy it"
                                    % (local, digest, pinned))
        dest = args.get("pyz_dest") or DEFAULT_PYZ_DEST
        extra = {"pyz_sha256": digest, "pyz": None}  # the module gets the upload's path, or nothing
        if self._remote_sha256(dest, task_vars) != digest:
            if self._connection._shell.tmpdir is None:
                self._make_tmp_path()
            upload = self._connection._shell.join_path(self._connection._shell.tmpdir, "nezha-bootstrap.pyz")
            self._transfer_file(local, upload)
            self._fixup_perms2((self._connection._shell.tmpdir, upload))
            extra["pyz"] = upload
        return extra

    def _remote_sha256(self, dest, task_vars):
        found = self._execute_module(module_name="ansible.legacy.stat", task_vars=task_vars, module_args={
            "path": dest, "get_checksum": True, "checksum_algorithm": "sha256", "follow": False})
        stat = found.get("stat") or {}
        return stat.get("checksum") if stat.get("exists") and stat.get("isreg") else None
