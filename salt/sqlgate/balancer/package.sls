{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}

sqlgate-balancer-package:
  pkg.installed:
    - pkgs: {{ sqlgate.balancer.packages | json }}
