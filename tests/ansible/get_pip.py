"""A stand-in for ansible-test's pip bootstrap script (get-pip-<version>.py), which it downloads from a
host outside the package registries: this one installs the Python's own bundled pip (ensurepip) and
then the pinned packages ansible-test asks for, from the package index as every other requirement.

ansible-test looks for it at ~/.ansible/test/cache/get_pip_<version>.py before downloading;
tests/test_ansible_lint.py puts it there under a scratch HOME. Run as `python get_pip_X_Y.py [pip
install options] pip==X.Y ...`, as ansible-test runs the real one.
"""

import ensurepip
import os
import ssl
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")  # get-pip.py's own options, not pip's

if __name__ == "__main__":
    ensurepip.bootstrap(upgrade=False)
    arguments = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    # ansible-test hides pip's configuration (PIP_CONFIG_FILE); the bundled pip trusts only its own
    # certifi, where pip >= 24.2 trusts the system store: give it the system store, as the pinned pip will.
    system_store = ssl.get_default_verify_paths().cafile
    if system_store and os.path.exists(system_store):
        arguments = ["--cert", system_store, *arguments]
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *arguments]))
