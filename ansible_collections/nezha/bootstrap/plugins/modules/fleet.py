#!/usr/bin/python
# Copyright: nezha-bootstrap contributors
# MIT License (see LICENSE at the repository's root)
"""Name, note, hide and group the servers of a v1/v2 dashboard: `nezha-bootstrap reconcile`."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet
short_description: Name, note, hide and group the servers of a Nezha v1/v2 dashboard
version_added: "0.1.0"
description:
  - Carries out C(nezha-bootstrap reconcile) with a manifest, from O(manifest) or built from O(servers)
    (for instance from inventory variables and each host's uuid, as the C(nezha.bootstrap.agent) role does).
  - "It talks to the dashboard, not to the hosts - run it once, on the controller
    (C(delegate_to: localhost), C(run_once: true))."
  - The tool runs from O(pyz) (a zipapp on the machine the module runs on, started with the module's python3),
    O(executable), or C(nezha-bootstrap) on C(PATH).
author:
  - nezha-bootstrap contributors (@nezha-bootstrap)
options:
  dashboard_url:
    description: The v1/v2 dashboard's URL.
    type: str
    required: true
  token:
    description:
      - A v2.1+ access token (C(nzp_...)) with C(nezha:inventory:read) and C(nezha:server:write).
      - Passed to the tool in a 0600 file, never on its command line.
    type: str
  token_file:
    description: A file holding the access token.
    type: path
  username:
    description: Log in as this user instead of a token (the only way on v1.x and v2.0).
    type: str
  password:
    description: The login's password; passed in a 0600 file, never on a command line.
    type: str
  password_file:
    description: A file holding the login's password.
    type: path
  manifest:
    description:
      - A C(.json) or C(.toml) manifest (the tool's docs, "reconcile manifest"). Mutually exclusive with O(servers).
    type: path
  servers:
    description:
      - The manifest's servers - each names a server by C(uuid) or C(machine_id) and may set C(name), C(note),
        C(public_note), C(hide_for_guest), C(display_index) and C(group) (a name, an id, or a list of them).
        A key left out, or null, is left as the dashboard has it.
    type: list
    elements: dict
  defaults:
    description: Keys that apply to every entry of O(servers).
    type: dict
  ca_bundle:
    description: A PEM file of a private CA.
    type: path
  deadline:
    description: Seconds of retries for one request (network failures, 5xx); refusals are never retried.
    type: float
  pyz:
    description: A nezha-bootstrap zipapp on the machine the module runs on.
    type: path
  pyz_sha256:
    description: The SHA-256 O(pyz) must have.
    type: str
  executable:
    description: The nezha-bootstrap command (default, C(nezha-bootstrap) on C(PATH) or in C(/opt/nezha-bootstrap/bin)).
    type: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying the target.
    support: full
    details: The tool's C(--dry-run) - the dashboard is only read, and the plan is returned.
  diff_mode:
    description: Will return details on what has changed (or might have changed in check_mode) when in diff mode.
    support: full
    details: The plan's table (ACTION, SERVER, UUID, FROM, TO) is shown as the diff.
notes:
  - A refused credential is never retried (the dashboard's WAF blocks the address for longer each time).
requirements:
  - nezha-bootstrap, or its zipapp and python3 >= 3.9, where the module runs
"""

EXAMPLES = r"""
- name: Name the fleet from a manifest
  nezha.bootstrap.fleet:
    dashboard_url: https://nezha.example.com
    username: admin
    password: "{{ vault_nezha_password }}"
    manifest: fleet.json
  delegate_to: localhost
  run_once: true

- name: Name the fleet from inventory variables
  nezha.bootstrap.fleet:
    dashboard_url: https://nezha.example.com
    token: "{{ vault_nezha_access_token }}"
    defaults:
      hide_for_guest: true
    servers: "{{ ansible_play_hosts | map('extract', hostvars, 'nezha_fleet_entry') | list }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
outcome:
  description: dry_run (check mode), applied, or unchanged.
  returned: success
  type: str
  sample: applied
writes:
  description: The number of writes planned (check mode) or applied and verified.
  returned: success
  type: int
  sample: 3
actions:
  description: The plan's rows (action, server, uuid, from, to).
  returned: success
  type: list
  elements: dict
table:
  description: The plan as the tool prints it.
  returned: success
  type: list
  elements: str
generation:
  description: The dashboard's generation.
  returned: success
  type: str
  sample: v2.1+
nezha:
  description: The tool's whole C(--json) result.
  returned: always
  type: dict
exit_reason:
  description: On failure, what the tool's exit code means.
  returned: failure
  type: str
rc:
  description: On failure, the tool's exit code.
  returned: failure
  type: int
"""

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nezha.bootstrap.plugins.module_utils.tool import (
    SecretFiles,
    controller_command,
    flag,
    run_tool,
    secret_args,
)


def manifest_text(servers, defaults):
    """The JSON manifest: null keys dropped, so that they are left as the dashboard has them."""
    entries = [dict((key, value) for key, value in entry.items() if value is not None) for entry in servers]
    document = {"servers": entries}
    if defaults:
        document["defaults"] = dict((key, value) for key, value in defaults.items() if value is not None)
    return json.dumps(document, sort_keys=True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dashboard_url=dict(type="str", required=True),
            token=dict(type="str", no_log=True),
            token_file=dict(type="path", no_log=False),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            password_file=dict(type="path", no_log=False),
            manifest=dict(type="path"),
            servers=dict(type="list", elements="dict"),
            defaults=dict(type="dict"),
            ca_bundle=dict(type="path"),
            deadline=dict(type="float"),
            pyz=dict(type="path"),
            pyz_sha256=dict(type="str"),
            executable=dict(type="path"),
        ),
        mutually_exclusive=[("token", "token_file"), ("password", "password_file"), ("manifest", "servers")],
        required_one_of=[("manifest", "servers")],
        required_by={"password": "username", "password_file": "username"},
        supports_check_mode=True,
    )
    params = module.params
    with SecretFiles(module.tmpdir) as files:
        manifest = params["manifest"]
        if manifest is None:
            manifest = files.write("manifest.json", manifest_text(params["servers"], params["defaults"]),
                                   shown="the manifest built from servers")
        argv = controller_command(module) + ["reconcile", manifest, "--json",
                                             "--dashboard-url", params["dashboard_url"]]
        argv += secret_args(files, [("token", params["token"]), ("password", params["password"])])
        for name in ("token_file", "password_file", "username", "ca_bundle"):
            if params[name]:
                argv += [flag(name), params[name]]
        if params["deadline"] is not None:
            argv += ["--deadline", "%g" % params["deadline"]]
        argv.append("--dry-run" if module.check_mode else "--apply")
        result = run_tool(module, argv, files)
    answer = dict(changed=result.get("writes", 0) > 0, nezha=result)
    answer.update((key, result[key]) for key in ("outcome", "writes", "actions", "table", "generation")
                  if key in result)
    if module._diff:
        answer["diff"] = dict(prepared="\n".join(result.get("table", [])) + "\n")
    module.exit_json(**answer)


if __name__ == "__main__":
    main()
