{#- The services' TLS files (tls.jinja), owned by their user. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls_files with context %}

include:
  - .user

{{ tls_files(sqlgate.app.user, [{'sls': 'sqlgate.app.user'}]) }}
