"""RuntimeService: the system's health and its domains."""

from __future__ import annotations

from typing import Any

from grpc import aio
from quantum.control.v1 import runtime_service_pb2 as pb
from quantum.control.v1 import runtime_service_pb2_grpc as pb_grpc

from control_plane.domains import DomainInspector
from control_plane.health import SystemHealth


class RuntimeServicer(pb_grpc.RuntimeServiceServicer):
    def __init__(self, system_health: SystemHealth, inspector: DomainInspector) -> None:
        self._system_health = system_health
        self._inspector = inspector

    async def GetSystemHealth(
        self, request: pb.GetSystemHealthRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetSystemHealthResponse:
        return await self._system_health.check()

    async def ListDomains(
        self, request: pb.ListDomainsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListDomainsResponse:
        figures = await self._inspector.figures()
        return pb.ListDomainsResponse(domains=[f.info for f in figures])
