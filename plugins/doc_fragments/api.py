# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The connection options of every xapi.system_auth module; the argument spec that matches
    # them is plugins/module_utils/_api.py connection_argument_spec().
    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - Base URL of the platform API, for example V(https://platform.example.com).
      - The modules append C(/api/v1/...) to it.
      - If not set, the value of the E(XAPI_URL) environment variable is used.
      - Required, either way.
    type: str
  api_token:
    description:
      - Platform admin bearer token used to manage system users.
      - If not set, the E(XAPI_ADMIN_TOKEN) environment variable is used, else E(XAPI_TOKEN). E(XAPI_ADMIN_TOKEN)
        comes first because it is what the collection's AWX credential type injects, so a stray E(XAPI_TOKEN)
        in the environment cannot replace it. A variable set to an empty string counts as not set.
      - Never printed; messages, diffs and logs carry at most its fingerprint.
    type: str
  validate_certs:
    description:
      - Verify the TLS certificate of the platform API.
      - Set to V(false) only for a test system; prefer O(ca_path) for a private CA.
    type: bool
    default: true
  ca_path:
    description:
      - Path of a PEM file with the CA certificate(s) that signed the platform API's certificate.
      - If not set, the E(XAPI_CA_PATH) environment variable is used, else the system trust store.
    type: path
  timeout:
    description:
      - Seconds to wait for the platform to connect and to answer, per request.
    type: float
    default: 30
  retries:
    description:
      - How many times a request that is safe to repeat (reads, deactivate) is retried after a
        connection error or an HTTP 429, 502, 503 or 504 answer, with exponential backoff.
        C(Retry-After) is honoured, up to 60 seconds.
      - A create is never blindly repeated; see the M(xapi.system_auth.system_user) module.
      - Between 0 and 10.
    type: int
    default: 3
requirements:
  - requests
  - python-dateutil
"""
