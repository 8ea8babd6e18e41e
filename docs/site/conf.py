# Sphinx configuration of the xapi.system_auth documentation site (built by hack/docs.sh).
# Scaffolded with `antsibull-docs sphinx-init`, then made to build offline.

project = "xapi.system_auth"
copyright = "xapi.system_auth maintainers"
title = "xapi.system_auth"
html_short_title = "xapi.system_auth"

# sphinx_antsibull_ext renders the option and return-value tables antsibull-docs writes.
extensions = ["sphinx_antsibull_ext"]

pygments_style = "ansible"
highlight_language = "YAML+Jinja"

html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
display_version = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False

# No intersphinx: the build must work without network access, and every reference in these
# pages points inside the site. (`nitpicky` below turns any dangling reference into an error.)
intersphinx_mapping: dict = {}

default_role = "any"
nitpicky = True
