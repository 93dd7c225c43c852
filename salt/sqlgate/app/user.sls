{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set app = sqlgate.app %}

{#- The services' unprivileged user. #}
sqlgate-app-user:
  user.present:
    - name: {{ app.user }}
    - system: True
    - home: {{ app.home }}
    - createhome: False
    - shell: /usr/sbin/nologin

{#- Its home (root's), configuration (readable by its group) and log directories. #}
sqlgate-app-directories:
  file.directory:
    - names:
      - {{ app.home }}:
        - user: root
        - group: root
        - mode: '0755'
      - {{ app.config_dir }}:
        - user: root
        - group: {{ app.user }}
        - mode: '0750'
      - {{ app.log_dir }}:
        - user: {{ app.user }}
        - group: {{ app.user }}
        - mode: '0750'
    - require:
      - user: sqlgate-app-user
