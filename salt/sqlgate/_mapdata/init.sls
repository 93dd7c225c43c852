{#- template-formula's `_mapdata`: the merged `sqlgate` settings of map.jinja for this minion
    (defaults, OS maps, flavour, pillar), written as YAML to see what the states work with:
        salt <minion> state.apply sqlgate._mapdata
    The secrets and the TLS certificates and keys are hidden (their names stay). The file is
    /tmp/salt_mapdata_dump.yaml, or the minion option (or pillar key) `sqlgate_mapdata_file`.
    tests/salt/test_mapdata.py compares it with tests/salt/golden/mapdata-<flavour>.yaml. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import sqlgate with context %}

{%- set values = salt['defaults.deepcopy'](sqlgate) %}
{%- set hidden = {} %}
{%- for name in values.get('secrets', {}) %}
{%-   do hidden.update({name: '<hidden>'}) %}
{%- endfor %}
{%- do values.update({'secrets': hidden}) %}
{%- set tls = values.get('tls', {}) %}
{%- for name in ('ca', 'cert', 'key') if name in tls %}
{%-   do tls.update({name: '<hidden>'}) %}
{%- endfor %}
{%- if tls.get('gatekeeper_public') %}
{%-   do tls.update({'gatekeeper_public': {'cert': '<hidden>', 'key': '<hidden>'}}) %}
{%- endif %}
{%- set _mapdata = {'values': values} %}
{%- do salt['log.debug']('### MAP.JINJA DUMP ###\n' ~ _mapdata | yaml(False)) %}

sqlgate-mapdata-dump:
  file.managed:
    - name: {{ salt['config.get']('sqlgate_mapdata_file', '/tmp/salt_mapdata_dump.yaml') }}
    - source: salt://{{ tplroot }}/_mapdata/_mapdata.jinja
    - template: jinja
    - mode: '0600'
    - context:
        map: {{ _mapdata | yaml }}
