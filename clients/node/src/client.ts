// A typed client for the Quantum Trader control plane, speaking gRPC over HTTP/2 through
// Connect for Node. Every type comes from the code generated from proto/ (src/gen), so the
// client follows the schema without a hand-kept copy.

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { readFileSync } from "node:fs";

import { PolicyService } from "./gen/quantum/control/v1/policy_service_pb.js";
import { RuntimeService, type GetSystemHealthResponse } from "./gen/quantum/control/v1/runtime_service_pb.js";
import type { StoredEvent } from "./gen/quantum/control/v1/stored_event_pb.js";
import { TraceService } from "./gen/quantum/control/v1/trace_service_pb.js";
import type { Policy, RiskMode } from "./gen/quantum/events/v1/policy_pb.js";

export interface ControlClientOptions {
  /** host:port of the control plane, for example "127.0.0.1:50051". */
  address: string;
  /** Bearer token (viewer for reads, operator for writes); omit for an open local server. */
  token?: string;
  /** PEM file of the CA that signed the server certificate: connect with TLS. */
  tlsCa?: string;
  /** Deadline of each unary call, milliseconds (default 10,000). */
  timeoutMs?: number;
}

export interface TraceFilter {
  traceId?: string;
  eventTypes?: string[];
  domains?: string[];
  symbols?: string[];
}

export interface SwitchModeOptions {
  /** The policy version the caller read; the write fails (ABORTED) when it is stale. */
  expectedVersion?: bigint;
  /** Why, recorded in the policy history. */
  reason?: string;
  /** A W3C traceparent: the change (and the policy.updated event) joins that trace. */
  traceparent?: string;
}

/** The control-plane operations a program in Node needs. */
export class ControlClient {
  readonly policy: Client<typeof PolicyService>;
  readonly traces: Client<typeof TraceService>;
  readonly runtime: Client<typeof RuntimeService>;
  private readonly timeoutMs: number;

  constructor(options: ControlClientOptions) {
    const bearer: Interceptor = (next) => async (request) => {
      if (options.token) {
        request.header.set("authorization", `Bearer ${options.token}`);
      }
      return next(request);
    };
    const transport = createGrpcTransport({
      baseUrl: `${options.tlsCa ? "https" : "http"}://${options.address}`,
      interceptors: [bearer],
      nodeOptions: options.tlsCa ? { ca: readFileSync(options.tlsCa) } : undefined,
    });
    this.policy = createClient(PolicyService, transport);
    this.traces = createClient(TraceService, transport);
    this.runtime = createClient(RuntimeService, transport);
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  /** Every component's health and the worst of them. */
  async health(): Promise<GetSystemHealthResponse> {
    return this.runtime.getSystemHealth({}, { timeoutMs: this.timeoutMs });
  }

  /** The policy in force. */
  async getPolicy(): Promise<Policy> {
    const response = await this.policy.getPolicy({}, { timeoutMs: this.timeoutMs });
    return required(response.policy, "GetPolicy");
  }

  /** Switch the risk mode; compare-and-set on ``expectedVersion`` when given. */
  async switchMode(mode: RiskMode, options: SwitchModeOptions = {}): Promise<Policy> {
    const response = await this.policy.switchMode(
      { mode, expectedVersion: options.expectedVersion, reason: options.reason ?? "" },
      {
        timeoutMs: this.timeoutMs,
        headers: options.traceparent ? { traceparent: options.traceparent } : undefined,
      },
    );
    return required(response.policy, "SwitchMode");
  }

  /** Live events matching ``filter``, until ``signal`` aborts (or the server ends the stream). */
  async *followTraces(filter: TraceFilter, signal?: AbortSignal): AsyncGenerator<StoredEvent> {
    const stream = this.traces.subscribeTraces(
      {
        traceId: filter.traceId ?? "",
        eventTypes: filter.eventTypes ?? [],
        domains: filter.domains ?? [],
        symbols: filter.symbols ?? [],
      },
      { signal },
    );
    for await (const response of stream) {
      if (response.event) {
        yield response.event;
      }
    }
  }

  /** Every stored event of one trace, ordered, with causation links. */
  async getTrace(traceId: string): Promise<StoredEvent[]> {
    const response = await this.traces.getTrace({ traceId }, { timeoutMs: this.timeoutMs });
    return response.events;
  }
}

function required<T>(value: T | undefined, call: string): T {
  if (value === undefined) {
    throw new Error(`${call} answered without a policy: is the server a Quantum Trader control plane?`);
  }
  return value;
}
