{#- HAProxy's settings: every Gatekeeper of the pillar (addresses from the mine) behind the
    public HTTPS and redirect ports, TLS passed through (mode tcp), checked over HTTPS on
    /health against the cluster CA, the client's address sent ahead of each connection in a
    PROXY protocol v2 header. Checked with `haproxy -c` before it replaces the file. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles, address_of with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls with context %}
{%- set balancer = sqlgate.balancer %}
{%- set servers = [] %}
{%- for name in roles.get('gatekeeper', []) %}
{%-   do servers.append({'name': name, 'address': address_of(name)}) %}
{%- endfor %}

include:
  - .package
  - .tls

sqlgate-balancer-run-dir:
  file.directory:
    - name: {{ balancer.run_dir }}
    - user: root
    - group: root
    - mode: '0755'

sqlgate-balancer-config:
  file.managed:
    - name: {{ balancer.config_file }}
    - source: salt://{{ tpldir }}/files/haproxy.cfg.jinja
    - template: jinja
    - mode: '0644'
    - context:
        balancer: {{ balancer | json }}
        ports: {{ sqlgate.ports | json }}
        ca_file: {{ tls.ca }}
        servers: {{ servers | json }}
    - check_cmd: {{ balancer.binary }} -c -q -f
    - require:
      - pkg: sqlgate-balancer-package
      - file: sqlgate-balancer-run-dir
      - file: sqlgate-tls-ca
