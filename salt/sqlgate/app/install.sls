{#- The project (as served by the Salt master) installed into a virtualenv. The install runs when
    the copied source differs from what was installed last (a digest kept in the virtualenv), and
    builds from a scratch copy so that the source directory stays as Salt left it. With a
    wheelhouse, pip uses only those wheels (hosts without Internet access). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set app = sqlgate.app %}
{%- set stamp = app.venv ~ '/.sqlgate-source.sha256' %}
{%- set digest = "(cd " ~ app.src_dir ~ " && find . -type f -print0 | LC_ALL=C sort -z"
                 ~ " | xargs -0 sha256sum) | sha256sum" %}
{%- set offline = '--no-index --find-links ' ~ app.wheelhouse_dir if app.wheelhouse else '' %}

include:
  - .user

sqlgate-app-packages:
  pkg.installed:
    - pkgs: {{ app.packages | json }}

sqlgate-app-source:
  file.recurse:
    - name: {{ app.src_dir }}
    - source: {{ app.source }}
    - clean: True
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'
    - require:
      - sls: sqlgate.app.user
{%- if app.wheelhouse %}

sqlgate-app-wheelhouse:
  file.recurse:
    - name: {{ app.wheelhouse_dir }}
    - source: {{ app.wheelhouse }}
    - clean: True
    - dir_mode: '0755'
    - file_mode: '0644'
    - require_in:
      - cmd: sqlgate-app-installed
{%- endif %}

sqlgate-app-venv:
  cmd.run:
    - name: {{ app.python }} -m venv {{ app.venv }}
    - creates: {{ app.venv }}/bin/python
    - require:
      - pkg: sqlgate-app-packages
      - file: sqlgate-app-directories

sqlgate-app-installed:
  cmd.run:
    - name: >-
        build=$(mktemp -d) && cp -a {{ app.src_dir }}/. "$build"
        && {{ app.venv }}/bin/pip install --quiet --disable-pip-version-check {{ offline }} "$build"
        && {{ digest }} > {{ stamp }}; status=$?; rm -rf "$build"; exit $status
    - unless: {{ digest }} | cmp -s - {{ stamp }}
    - require:
      - cmd: sqlgate-app-venv
      - file: sqlgate-app-source
