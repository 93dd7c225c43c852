{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}

sqlgate-monitor-package:
  pkg.installed:
    - pkgs: {{ sqlgate.monitor.packages | json }}
