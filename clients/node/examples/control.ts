// Example: the control plane from Node. Prints one JSON document per line.
//
//   QUANTUM_ADDR=127.0.0.1:50051 QUANTUM_TOKEN=... node dist/examples/control.js health
//   ... get-policy
//   ... switch-mode DEFENSIVE [expected-version] [reason]   (TRACEPARENT=00-... joins a trace)
//   ... follow [--trace-id ID] [--type EVENT_TYPE] [--domain D] [--symbol S] [--limit N]
//   ... get-trace TRACE_ID
//
// Build first: `npm exec -- tsc -p clients/node` (from the repository root).

import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

import { ControlClient, type TraceFilter } from "../src/client.js";
import { GetSystemHealthResponseSchema } from "../src/gen/quantum/control/v1/runtime_service_pb.js";
import { StoredEventSchema } from "../src/gen/quantum/control/v1/stored_event_pb.js";
import { PolicySchema, RiskMode } from "../src/gen/quantum/events/v1/policy_pb.js";

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function parseFollow(args: string[]): { filter: TraceFilter; limit: number } {
  const filter: Required<TraceFilter> = { traceId: "", eventTypes: [], domains: [], symbols: [] };
  let limit = 10;
  for (let i = 0; i < args.length; i += 2) {
    const value = args[i + 1];
    if (value === undefined) {
      throw new Error(`${args[i]} needs a value`);
    }
    switch (args[i]) {
      case "--trace-id": filter.traceId = value; break;
      case "--type": filter.eventTypes.push(value); break;
      case "--domain": filter.domains.push(value); break;
      case "--symbol": filter.symbols.push(value); break;
      case "--limit": limit = Number(value); break;
      default: throw new Error(`unknown option ${args[i]}`);
    }
  }
  return { filter, limit };
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  const client = new ControlClient({
    address: process.env.QUANTUM_ADDR ?? "127.0.0.1:50051",
    token: process.env.QUANTUM_TOKEN,
    tlsCa: process.env.QUANTUM_CLIENT_TLS_CA,
  });
  switch (command) {
    case "health": {
      print(toJson(GetSystemHealthResponseSchema, await client.health()));
      return 0;
    }
    case "get-policy": {
      print(toJson(PolicySchema, await client.getPolicy()));
      return 0;
    }
    case "switch-mode": {
      const [modeName, expected, reason] = args;
      const mode = RiskMode[(modeName ?? "").toUpperCase() as keyof typeof RiskMode];
      if (mode === undefined || mode === RiskMode.UNSPECIFIED) {
        throw new Error(`switch-mode needs AGGRESSIVE, NORMAL or DEFENSIVE, not ${modeName}`);
      }
      const policy = await client.switchMode(mode, {
        expectedVersion: expected ? BigInt(expected) : undefined,
        reason: reason ?? "switched from the Node example",
        traceparent: process.env.TRACEPARENT,
      });
      print(toJson(PolicySchema, policy));
      return 0;
    }
    case "follow": {
      const { filter, limit } = parseFollow(args);
      const stop = new AbortController();
      let seen = 0;
      try {
        for await (const event of client.followTraces(filter, stop.signal)) {
          print(toJson(StoredEventSchema, event));
          if (++seen >= limit) {
            stop.abort();
          }
        }
      } catch (error) {
        if (!stop.signal.aborted) {
          throw error;
        }
      }
      return 0;
    }
    case "get-trace": {
      for (const event of await client.getTrace(args[0] ?? "")) {
        print(toJson(StoredEventSchema, event));
      }
      return 0;
    }
    default:
      process.stderr.write("usage: control.js health|get-policy|switch-mode|follow|get-trace ...\n");
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    const text = error instanceof ConnectError ? `${Code[error.code]}: ${error.rawMessage}` : String(error);
    process.stderr.write(`control.js: ${text}\n`);
    process.exit(1);
  },
);
