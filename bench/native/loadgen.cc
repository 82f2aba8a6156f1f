// recpilot native load generator: a closed loop of unary gRPC calls, as Triton's perf_analyzer or
// ghz would drive a server, at a fraction of the CPU a Python grpc.aio client spends per call
// (on a 2-core box the generator shares the cores with the server it measures).
//
// The calls are generic (grpc::GenericStub): the request messages come pre-serialised from a file
// written by the Python bench, so this program needs no generated protobuf code, only libgrpc++.
//
//   loadgen --target 127.0.0.1:50051 --method /inference.GRPCInferenceService/ModelInfer \
//           --requests FILE --concurrency 64 --connections 8 --seconds 10 [--warmup 1] [--timeout-ms 5000]
//           [--connect-timeout-s 10]
//
// FILE: each request as a 4-byte little-endian length followed by the serialised message; call i
// sends request i mod N. Output (stdout, one JSON object): requests, errors by status code,
// requests/s, latency percentiles in ms, and this process's CPU per request.
//
// Built by bench/native/__init__.py: g++ -O2 -std=c++17 loadgen.cc $(pkg-config --cflags --libs grpc++)

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string method;
  std::string requests;
  int concurrency = 64;
  int connections = 8;
  double seconds = 10.0;
  double warmup = 1.0;
  int timeout_ms = 5000;
  double connect_timeout_s = 10.0;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "loadgen: %s\nusage: loadgen --method /pkg.Service/Method --requests FILE [--target HOST:PORT] "
               "[--concurrency N] [--connections N] [--seconds S] [--warmup S] [--timeout-ms MS] "
               "[--connect-timeout-s S]\n",
               why);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage(("missing value for " + a).c_str());
    std::string v = argv[++i];
    try {
      if (a == "--target") o.target = v;
      else if (a == "--method") o.method = v;
      else if (a == "--requests") o.requests = v;
      else if (a == "--concurrency") o.concurrency = std::stoi(v);
      else if (a == "--connections") o.connections = std::stoi(v);
      else if (a == "--seconds") o.seconds = std::stod(v);
      else if (a == "--warmup") o.warmup = std::stod(v);
      else if (a == "--timeout-ms") o.timeout_ms = std::stoi(v);
      else if (a == "--connect-timeout-s") o.connect_timeout_s = std::stod(v);
      else usage(("unknown option " + a).c_str());
    } catch (const std::exception&) {
      usage(("bad value for " + a + ": " + v).c_str());
    }
  }
  if (o.method.empty() || o.requests.empty()) usage("--method and --requests are required");
  if (o.concurrency < 1 || o.connections < 1 || o.seconds <= 0 || o.warmup < 0 || o.timeout_ms < 1 ||
      o.connect_timeout_s <= 0)
    usage("--concurrency, --connections, --seconds, --timeout-ms and --connect-timeout-s must be positive");
  return o;
}

std::vector<std::string> read_requests(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage(("cannot read " + path).c_str());
  std::vector<std::string> out;
  for (;;) {
    unsigned char len[4];
    if (!in.read(reinterpret_cast<char*>(len), 4)) break;
    uint32_t n = len[0] | (len[1] << 8) | (len[2] << 16) | (uint32_t(len[3]) << 24);
    std::string msg(n, '\0');
    if (n && !in.read(msg.data(), n)) usage(("truncated request in " + path).c_str());
    out.push_back(std::move(msg));
  }
  if (out.empty()) usage(("no requests in " + path).c_str());
  return out;
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// One call in flight; a slot starts its next call when this one completes (closed loop).
struct Slot {
  int index = 0;
  grpc::GenericStub* stub = nullptr;
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::ByteBuffer response;
  grpc::Status status;
  Clock::time_point started;
  size_t next = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  std::vector<std::string> raw = read_requests(o.requests);
  std::vector<grpc::ByteBuffer> payloads;
  for (const auto& r : raw) {
    grpc::Slice s(r);
    payloads.emplace_back(&s, 1);
  }

  // one TCP connection per channel: distinct channel args keep grpc from sharing a subchannel
  std::vector<std::shared_ptr<grpc::Channel>> chans;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int i = 0; i < o.connections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("recpilot.loadgen.connection", i);
    args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
    args.SetMaxSendMessageSize(64 * 1024 * 1024);
    chans.push_back(grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args));
    if (!chans.back()->WaitForConnected(std::chrono::system_clock::now() +
                                      std::chrono::milliseconds(int64_t(o.connect_timeout_s * 1000)))) {
      std::fprintf(stderr, "loadgen: cannot connect to %s\n", o.target.c_str());
      return 1;
    }
    stubs.push_back(std::make_unique<grpc::GenericStub>(chans.back()));
  }

  grpc::CompletionQueue cq;
  std::vector<Slot> slots(o.concurrency);
  const auto t_start = Clock::now();
  const auto t_measure = t_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup));
  const auto t_end = t_measure + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));

  auto start = [&](Slot& s) {
    s.ctx = std::make_unique<grpc::ClientContext>();
    s.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(o.timeout_ms));
    s.response.Clear();
    s.started = Clock::now();
    s.reader = s.stub->PrepareUnaryCall(s.ctx.get(), o.method, payloads[s.next % payloads.size()], &cq);
    s.next += o.concurrency;
    s.reader->StartCall();
    s.reader->Finish(&s.response, &s.status, &s);
  };

  for (int i = 0; i < o.concurrency; ++i) {
    slots[i].index = i;
    slots[i].next = i;
    slots[i].stub = stubs[i % o.connections].get();
    start(slots[i]);
  }

  std::vector<float> lat_ms;
  lat_ms.reserve(1 << 20);
  std::map<std::string, long> errors;
  long requests = 0, response_bytes = 0;
  double cpu0 = -1;
  int in_flight = o.concurrency;
  void* tag;
  bool ok;
  while (in_flight > 0 && cq.Next(&tag, &ok)) {
    Slot& s = *static_cast<Slot*>(tag);
    const auto now = Clock::now();
    if (cpu0 < 0 && now >= t_measure) cpu0 = cpu_seconds();
    if (s.started >= t_measure && now <= t_end) {
      ++requests;
      lat_ms.push_back(std::chrono::duration<float, std::milli>(now - s.started).count());
      if (!ok || !s.status.ok()) {
        static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                      "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
        int code = ok ? s.status.error_code() : 2;
        errors[code >= 0 && code <= 16 ? names[code] : "UNKNOWN"]++;
      } else {
        response_bytes += s.response.Length();
      }
    }
    if (now < t_end) {
      start(s);
    } else {
      --in_flight;
    }
  }
  const double cpu = cpu_seconds() - (cpu0 < 0 ? 0 : cpu0);
  const double took = std::chrono::duration<double>(std::min(Clock::now(), t_end) - t_measure).count();

  std::sort(lat_ms.begin(), lat_ms.end());
  auto pct = [&](double q) -> double {
    if (lat_ms.empty()) return 0.0;
    size_t i = std::min(lat_ms.size() - 1, size_t(q / 100.0 * (lat_ms.size() - 1) + 0.5));
    return lat_ms[i];
  };
  long n_errors = 0;
  std::string err_json;
  for (const auto& [k, v] : errors) {
    n_errors += v;
    err_json += (err_json.empty() ? "" : ", ") + ("\"" + k + "\": " + std::to_string(v));
  }
  std::printf(
      "{\"requests\": %ld, \"errors\": %ld, \"error_kinds\": {%s}, \"seconds\": %.3f, \"rps\": %.1f, "
      "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f, \"response_bytes\": %ld, "
      "\"client_cpu_ms_per_request\": %.4f, \"concurrency\": %d, \"connections\": %d}\n",
      requests, n_errors, err_json.c_str(), took, requests / std::max(took, 1e-9), pct(50), pct(99), pct(99.9),
      lat_ms.empty() ? 0.0 : lat_ms.back(), response_bytes, cpu * 1000.0 / std::max(requests, 1L), o.concurrency,
      o.connections);
  return 0;
}
