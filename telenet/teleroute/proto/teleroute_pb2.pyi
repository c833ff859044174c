from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("gateways", "pid")
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    gateways: _containers.RepeatedScalarFieldContainer[bytes]
    pid: int
    def __init__(self, gateways: _Optional[_Iterable[bytes]] = ..., pid: _Optional[int] = ...) -> None: ...

class CreateEndpointRequest(_message.Message):
    __slots__ = ("id", "addr_ipv4", "daemon", "addr_ipv6", "in_daemon_netns", "interface_addresses")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_IPV4_FIELD_NUMBER: _ClassVar[int]
    DAEMON_FIELD_NUMBER: _ClassVar[int]
    ADDR_IPV6_FIELD_NUMBER: _ClassVar[int]
    IN_DAEMON_NETNS_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    id: str
    addr_ipv4: bytes
    daemon: bool
    addr_ipv6: bytes
    in_daemon_netns: bool
    interface_addresses: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, id: _Optional[str] = ..., addr_ipv4: _Optional[bytes] = ..., daemon: _Optional[bool] = ..., addr_ipv6: _Optional[bytes] = ..., in_daemon_netns: _Optional[bool] = ..., interface_addresses: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EndpointIdentifier(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("interface_src_name", "interface_dst_prefix", "routes", "via", "gw_ip_v4", "gw_ip_v6", "disable_gw", "via_ip_v4", "via_ip_v6", "interface_in_daemon_netns")
    INTERFACE_SRC_NAME_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_DST_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    GW_IP_V4_FIELD_NUMBER: _ClassVar[int]
    GW_IP_V6_FIELD_NUMBER: _ClassVar[int]
    DISABLE_GW_FIELD_NUMBER: _ClassVar[int]
    VIA_IP_V4_FIELD_NUMBER: _ClassVar[int]
    VIA_IP_V6_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_IN_DAEMON_NETNS_FIELD_NUMBER: _ClassVar[int]
    interface_src_name: str
    interface_dst_prefix: str
    routes: _containers.RepeatedScalarFieldContainer[bytes]
    via: bytes
    gw_ip_v4: bytes
    gw_ip_v6: bytes
    disable_gw: bool
    via_ip_v4: bytes
    via_ip_v6: bytes
    interface_in_daemon_netns: bool
    def __init__(self, interface_src_name: _Optional[str] = ..., interface_dst_prefix: _Optional[str] = ..., routes: _Optional[_Iterable[bytes]] = ..., via: _Optional[bytes] = ..., gw_ip_v4: _Optional[bytes] = ..., gw_ip_v6: _Optional[bytes] = ..., disable_gw: _Optional[bool] = ..., via_ip_v4: _Optional[bytes] = ..., via_ip_v6: _Optional[bytes] = ..., interface_in_daemon_netns: _Optional[bool] = ...) -> None: ...

class Info(_message.Message):
    __slots__ = ("info",)
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _containers.ScalarMap[str, str]
    def __init__(self, info: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WatchRoutesRequest(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class RoutesUpdate(_message.Message):
    __slots__ = ("routes", "via_ip_v4", "via_ip_v6")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    VIA_IP_V4_FIELD_NUMBER: _ClassVar[int]
    VIA_IP_V6_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedScalarFieldContainer[bytes]
    via_ip_v4: bytes
    via_ip_v6: bytes
    def __init__(self, routes: _Optional[_Iterable[bytes]] = ..., via_ip_v4: _Optional[bytes] = ..., via_ip_v6: _Optional[bytes] = ...) -> None: ...
