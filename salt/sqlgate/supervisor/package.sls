{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}

supervisor is installed:
  pkg.installed:
    - pkgs: {{ sqlgate.supervisor.packages | json }}
