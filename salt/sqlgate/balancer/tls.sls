{#- The balancer host's TLS files (tls.jinja): it checks the Gatekeepers' certificates against
    the cluster CA in its health checks; client traffic passes through untouched. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls_files with context %}

include:
  - .package

{{ tls_files(sqlgate.balancer.user, [{'pkg': 'sqlgate-balancer-package'}]) }}
