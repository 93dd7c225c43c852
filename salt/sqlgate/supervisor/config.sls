{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set supervisor = sqlgate.supervisor %}

include:
  - .package

{#- supervisord's socket, log and program directories. #}
sqlgate-supervisor-directories:
  file.directory:
    - names:
      - {{ supervisor.run_dir }}:
        - mode: '0700'
      - {{ supervisor.log_dir }}:
        - mode: '0750'
      - {{ supervisor.programs_dir }}:
        - mode: '0755'
    - makedirs: True
    - require:
      - sls: sqlgate.supervisor.package

sqlgate-supervisor-config:
  file.managed:
    - name: {{ supervisor.config_file }}
    - source: salt://sqlgate/files/supervisord.conf.jinja
    - template: jinja
    - mode: '0644'
    - context:
        supervisor: {{ supervisor | json }}
    - require:
      - file: sqlgate-supervisor-directories
