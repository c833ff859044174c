# Import-light twistd dropins: each names the module that supplies Options and makeService.
from twisted.application.service import ServiceMaker

telemount = ServiceMaker(
    "telenet telemount",
    "telenet.mountplugin",
    "Docker volume plug-in serving SFTP exports",
    "telemount",
)
sftpAgent = ServiceMaker(
    "telenet sftp-agent", "telenet.agent", "Raw SFTP server exporting a directory", "sftp-agent"
)
teleroute = ServiceMaker(
    "telenet teleroute",
    "telenet.routeplugin",
    "Docker network plug-in routing containers through a Telepresence daemon",
    "teleroute",
)
telepresenceDaemon = ServiceMaker(
    "telenet telepresence-daemon",
    "telenet.daemon",
    "Telepresence daemon side of teleroute: veth pairs, VIF routes, DNS, control API",
    "telepresence-daemon",
)
