#!/usr/bin/python
# Copyright: nezha-bootstrap contributors
# MIT License (see LICENSE at the repository's root)
"""Register the managed host with a Nezha dashboard and install its agent: `nezha-bootstrap run`."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: node
short_description: Register a host with a Nezha dashboard and install its agent, once
version_added: "0.1.0"
description:
  - Carries out C(nezha-bootstrap run) on the managed host (or C(nezha-bootstrap uninstall) with O(state=absent)).
    The tool decides and acts; the module passes the options as the tool's flags, the secrets through
    0600 files (never on a command line), and reads back the tool's C(--json) result.
  - With O(pyz), the action plugin copies that zipapp from the controller to O(pyz_dest) on the host
    (only when the host's copy has another SHA-256), the module checks its SHA-256 before it runs it,
    and runs it with the host's python3 (the interpreter Ansible runs the module with, 3.9 or newer).
    Without O(pyz) it runs the C(nezha-bootstrap) installed on the host (O(executable), else on C(PATH)
    or in C(/opt/nezha-bootstrap/bin)).
  - Every other option is the C(run) flag of the same name (C(--agent-base-url) is O(agent_base_url));
    an option left unset is not passed, so the tool's default (and its environment variable) applies.
  - C(changed) comes from the tool's result, not from this module; a rerun with nothing to do reports
    C(ok) and, on a v0 dashboard or a v1/v2 one without an access token, sends no request at all.
author:
  - nezha-bootstrap contributors (@nezha-bootstrap)
options:
  state:
    description:
      - V(present) runs C(nezha-bootstrap run); V(absent) runs C(nezha-bootstrap uninstall) (the agent and
        the tool's state are removed; delete the server the result names in the dashboard).
    type: str
    choices: [present, absent]
    default: present
  purge:
    description:
      - With O(state=absent), also remove C(nezha-bootstrap.service) and C(/etc/nezha-bootstrap) (C(uninstall --purge)).
    type: bool
    default: false
  dashboard_url:
    description: The dashboard's URL (C(--dashboard-url)). Required with O(state=present).
    type: str
  token:
    description:
      - A v0 dashboard's API token, or on v2.1+ an access token (C(nzp_...)) that names the server.
      - Passed to the tool in a 0600 file, never on its command line. Mutually exclusive with O(token_file).
    type: str
  token_file:
    description: A file on the host that holds the token (C(--token-file)).
    type: path
  agent_secret:
    description:
      - The v1/v2 agent secret. Passed to the tool in a 0600 file, never on its command line.
    type: str
  agent_secret_file:
    description: A file on the host that holds the agent secret (C(--agent-secret-file)).
    type: path
  pyz:
    description:
      - A nezha-bootstrap zipapp on the controller (a path, or a file in the role's or play's C(files/)).
        The action plugin copies it to O(pyz_dest) when the host's copy differs, and the module runs it.
      - The module itself receives the path of the uploaded copy on the host, or nothing when the host
        already has the same file.
    type: str
  pyz_sha256:
    description:
      - The SHA-256 the zipapp must have. With O(pyz), a pin checked on the controller before the copy
        (unset, the controller's file is hashed) and again on the host before it runs.
      - Without O(pyz), runs the zipapp already at O(pyz_dest), which must have this hash.
    type: str
  pyz_dest:
    description: Where the zipapp is kept on the host.
    type: path
    default: /opt/nezha-bootstrap/ansible/nezha-bootstrap.pyz
  executable:
    description:
      - Without O(pyz), the nezha-bootstrap command to run (default, C(nezha-bootstrap) on C(PATH) or in
        C(/opt/nezha-bootstrap/bin)).
    type: path
  root:
    description: Resolve every path the tool reads or writes under this directory (C(--root); default C(/)).
    type: path
  probe_address:
    description: The agent's server host (C(--probe-address)).
    type: str
  probe_port:
    description: The agent's server port (C(--probe-port)).
    type: int
  tls:
    description: The agent connects with TLS (C(--tls) or C(--no-tls)).
    type: bool
  name:
    description: The server's name; C({hostname}), C({ip}), C({machine_id}) are filled in (C(--name)).
    type: str
  tag:
    description: v0 server tag (C(--tag)).
    type: str
  note:
    description: Server note (C(--note)).
    type: str
  hide_for_guest:
    description: Hide the server from guests (C(--hide-for-guest) or C(--show-for-guest)).
    type: bool
  agent_flag:
    description: v0 agent flags (C(--agent-flag), repeated).
    type: list
    elements: str
  script_url:
    description: The v0 install.sh to run (C(--script-url)).
    type: str
  script_sha256:
    description: SHA-256 of that script (C(--script-sha256)).
    type: str
  mirror:
    description: V(cn), the installer uses the China mirror (C(--mirror)).
    type: str
  deadline:
    description: Seconds for all retries of one step together (C(--deadline)).
    type: float
  lock_timeout:
    description: Seconds to wait for another run's lock (C(--lock-timeout)).
    type: float
  ca_bundle:
    description: A PEM file on the host of a private CA (C(--ca-bundle)).
    type: path
  dashboard:
    description: The dashboard's generation (C(--dashboard)); V(auto) probes it.
    type: str
    choices: [auto, v0, v1, v2]
  method:
    description: V(script) (install.sh, v0 only) or V(direct) (the pinned agent release) (C(--method)).
    type: str
    choices: [script, direct]
  agent_base_url:
    description: The agent release base URL (C(--agent-base-url)).
    type: str
  agent_version:
    description: The agent release (C(--agent-version)).
    type: str
  agent_sha256:
    description: Pinned SHA-256 of the agent zip (C(--agent-sha256)).
    type: str
  agent_option:
    description: Agent C(config.yml) settings as C(KEY=VALUE) (C(--agent-option), repeated).
    type: list
    elements: str
  uuid:
    description: The agent's uuid (C(--uuid)); default, derived from C(/etc/machine-id).
    type: str
  adopt:
    description: Uninstall agents the vendor script left and report their uuids (C(--adopt)).
    type: bool
    default: false
  allow_plaintext:
    description: Allow an agent connection without TLS to a public address (C(--allow-plaintext)).
    type: bool
    default: false
  public_note:
    description: v2.1+ token mode, the server's public note (C(--public-note)).
    type: str
  display_index:
    description: v2.1+ token mode, the sort weight (C(--display-index)).
    type: int
  group:
    description: v2.1+ token mode, join the server group of this name (C(--group)).
    type: str
  group_id:
    description: v2.1+ token mode, the group's id when names repeat (C(--group-id)).
    type: int
  create_group:
    description: v2.1+ token mode, create O(group) when missing (C(--create-group)).
    type: bool
    default: false
  enroll_timeout:
    description: v2.1+ token mode, seconds to wait for the dashboard to list the server (C(--enroll-timeout)).
    type: float
  online_timeout:
    description:
      - Seconds to wait, after installing the agent, for the dashboard to show this host online (C(--online-timeout));
        the task succeeds only once it does.
    type: float
  force:
    description: Register again even if this host is registered (C(--force)); never idempotent.
    type: bool
    default: false
  rehearsal:
    description:
      - With O(root) other than C(/), run against the test fakes' stub installer and agents only
        (C(--rehearsal)); any other installer is refused. Without it the tool refuses such a root.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying the target.
    support: full
    details: The tool's C(--dry-run) runs instead; it sends no request and writes nothing, and its plan is returned.
  diff_mode:
    description: Will return details on what has changed (or might have changed in check_mode) when in diff mode.
    support: full
    details: The plan (what C(run --dry-run) or C(uninstall --dry-run) prints) is shown as the diff.
notes:
  - Check mode reports C(changed) when the plan registers or installs. In v2.1+ token mode it cannot
    know whether the name, notes or group would change (the dry run sends no request), so a run may
    still report C(updated) after a check that reported C(ok).
  - The tool's exit codes become failures with its message and the code's meaning in RV(exit_reason).
requirements:
  - python3 >= 3.9 on the managed host
  - with O(pyz), nothing else; without it, nezha-bootstrap installed on the host
"""

EXAMPLES = r"""
- name: Register with a v0 dashboard and install its agent
  nezha.bootstrap.node:
    pyz: files/nezha-bootstrap-0.1.0-x86_64.pyz
    dashboard_url: https://nezha.example.com
    token: "{{ vault_nezha_api_token }}"
    name: "web-{ip}"
    tag: web

- name: Enroll with a v2.1+ dashboard, named and grouped with an access token
  nezha.bootstrap.node:
    pyz: files/nezha-bootstrap-0.1.0-x86_64.pyz
    dashboard_url: https://nezha.example.com
    agent_secret: "{{ vault_nezha_agent_secret }}"
    token: "{{ vault_nezha_access_token }}"
    name: "{{ inventory_hostname }}"
    group: web

- name: Remove the agent and the tool's state
  nezha.bootstrap.node:
    state: absent
"""

RETURN = r"""
outcome:
  description:
    - What the tool did - registered_and_installed, installed, updated, nothing_to_do, uninstalled, or
      dry_run in check mode.
  returned: success
  type: str
  sample: registered_and_installed
generation:
  description: The dashboard's generation (v0, v1.0-1.4, v1.5-1.14, v2.0, v2.1+; auto when a dry run probed nothing).
  returned: with state=present
  type: str
  sample: v0
name:
  description: The server's name (v0, and v2.1+ token mode).
  returned: when known
  type: str
  sample: web-1
uuid:
  description: The agent's uuid (v1/v2).
  returned: when known
  type: str
  sample: 8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d
server_id:
  description: The server's id on the dashboard, when the tool reports it.
  returned: when present
  type: int
online:
  description: Whether the dashboard saw the agent online, when the tool reports it.
  returned: when present
  type: raw
plan:
  description: The tool's plan, line by line (check mode; O(state=absent) returns the actions carried out).
  returned: when there is one
  type: list
  elements: str
zipapp_placed:
  description: Whether the zipapp was copied into O(pyz_dest) by this task.
  returned: with pyz
  type: bool
nezha:
  description: The tool's whole C(--json) result (secrets are never in it).
  returned: always
  type: dict
exit_reason:
  description: On failure, what the tool's exit code means.
  returned: failure
  type: str
  sample: the dashboard refused (token, v1+ dashboard, bad request, TLS verification, orphan server)
rc:
  description: On failure, the tool's exit code.
  returned: failure
  type: int
  sample: 3
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nezha.bootstrap.plugins.module_utils.tool import (
    TOOL_OPTIONS,
    SecretFiles,
    flag,
    run_tool,
    secret_args,
    tool_command,
)

VALUE_OPTIONS = (
    "dashboard_url", "token_file", "agent_secret_file", "root", "probe_address", "probe_port", "name", "tag", "note",
    "script_url", "script_sha256", "mirror", "deadline", "lock_timeout", "ca_bundle", "dashboard", "method",
    "agent_base_url", "agent_version", "agent_sha256", "uuid", "public_note", "display_index", "group", "group_id",
    "enroll_timeout", "online_timeout",
)
REPEATED_OPTIONS = ("agent_flag", "agent_option")
SWITCHES = ("adopt", "allow_plaintext", "create_group", "force", "rehearsal")
PAIRS = {"tls": ("--tls", "--no-tls"), "hide_for_guest": ("--hide-for-guest", "--show-for-guest")}
SECRETS = (("token", "token"), ("agent-secret", "agent_secret"))
RESULT_KEYS = ("outcome", "generation", "name", "uuid", "server_id", "online", "plan")


def argument_spec():
    spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        purge=dict(type="bool", default=False),
        token=dict(type="str", no_log=True),
        agent_secret=dict(type="str", no_log=True),
        probe_port=dict(type="int"),
        display_index=dict(type="int"),
        group_id=dict(type="int"),
        deadline=dict(type="float"),
        lock_timeout=dict(type="float"),
        enroll_timeout=dict(type="float"),
        online_timeout=dict(type="float"),
        token_file=dict(type="path", no_log=False),
        agent_secret_file=dict(type="path", no_log=False),
        dashboard=dict(type="str", choices=["auto", "v0", "v1", "v2"]),
        method=dict(type="str", choices=["script", "direct"]),
        **TOOL_OPTIONS
    )
    for name in VALUE_OPTIONS:
        spec.setdefault(name, dict(type="path" if name.endswith("_file") or name in ("root", "ca_bundle") else "str"))
    for name in REPEATED_OPTIONS:
        spec[name] = dict(type="list", elements="str")
    for name in SWITCHES:
        spec[name] = dict(type="bool", default=False)
    for name in PAIRS:
        spec[name] = dict(type="bool")
    return spec


def run_flags(params):
    """The `run` flags for the options that are set, in a stable order; secrets are not among them."""
    argv = []
    for name in VALUE_OPTIONS:
        if params[name] is not None:
            value = params[name]
            argv += [flag(name), ("%g" % value) if isinstance(value, float) else str(value)]
    for name in REPEATED_OPTIONS:
        for value in params[name] or []:
            argv += [flag(name), value]
    argv += [flag(name) for name in SWITCHES if params[name]]
    for name, (on, off) in sorted(PAIRS.items()):
        if params[name] is not None:
            argv.append(on if params[name] else off)
    return argv


def present(module, command):
    params = module.params
    with SecretFiles(module.tmpdir) as files:
        secrets = secret_args(files, [(flag_name, params[key]) for flag_name, key in SECRETS])
        base = command + ["run", "--json"] + run_flags(params) + secrets
        if module.check_mode:
            planned = run_tool(module, base + ["--dry-run"], files)
            return planned, _would_change(planned), planned.get("plan", [])
        plan = []
        if module._diff:  # the plan as the diff: a dry run first (no request, no write)
            plan = run_tool(module, base + ["--dry-run"], files).get("plan", [])
        result = run_tool(module, base, files)
    changed = result.get("outcome") != "nothing_to_do" or bool(result.get("adopted_uuids"))
    return result, changed, plan


def _would_change(planned):
    """A dry run's plan changes something unless the tool decided there is nothing to do."""
    return planned.get("action", "unknown") != "nothing"


def absent(module, command):
    argv = command + ["uninstall", "--json"]
    if module.params["root"]:
        argv += ["--root", module.params["root"]]
    if module.params["purge"]:
        argv.append("--purge")
    if module.check_mode:
        argv.append("--dry-run")
    result = run_tool(module, argv)
    actions = result.get("actions", [])
    return result, bool(actions), actions


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("token", "token_file"), ("agent_secret", "agent_secret_file")],
        required_if=[("state", "present", ("dashboard_url",))],
        supports_check_mode=True,
    )
    command, placed = tool_command(module)
    if module.params["state"] == "absent":
        result, changed, plan = absent(module, command)
    else:
        result, changed, plan = present(module, command)
    answer = dict(changed=changed or placed, nezha=result)
    answer.update((key, result[key]) for key in RESULT_KEYS if result.get(key) is not None)
    if module.params["state"] == "absent":
        answer["plan"] = plan
    if module.params.get("pyz_sha256"):
        answer["zipapp_placed"] = placed
    if module._diff:
        answer["diff"] = dict(prepared="\n".join(plan) + "\n" if plan else "")
    module.exit_json(**answer)


if __name__ == "__main__":
    main()
