{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set ctl = 'supervisorctl -c ' ~ sqlgate.supervisor.config_file %}
{%- set answers = ctl ~ " pid | grep -q '^[0-9][0-9]*$'" %}

include:
  - .config

{#- supervisord runs and answers on its socket. #}
sqlgate-supervisor-running:
  cmd.run:
    - name: >-
        supervisord -c {{ sqlgate.supervisor.config_file }} </dev/null >/dev/null 2>&1
        && timeout 30 sh -c "until {{ answers }}; do sleep 0.2; done"
    - unless: {{ answers }}
    - require:
      - sls: sqlgate.supervisor.config

{#- It rereads its configuration when that changes. #}
sqlgate-supervisor-reload:
  cmd.run:
    - name: {{ ctl }} reload && timeout 30 sh -c "until {{ answers }}; do sleep 0.2; done"
    - onchanges:
      - file: sqlgate-supervisor-config
    - require:
      - cmd: sqlgate-supervisor-running
