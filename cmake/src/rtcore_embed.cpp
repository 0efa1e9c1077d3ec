#include "rtcore_embed.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace rtcore {
namespace {

torch::Tensor read_raw(const std::string& path, torch::IntArrayRef shape, torch::ScalarType dtype) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  auto tensor = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  const auto bytes = static_cast<std::streamsize>(tensor.numel() * tensor.element_size());
  in.read(static_cast<char*>(tensor.data_ptr()), bytes);
  if (in.gcount() != bytes) throw std::runtime_error(path + " is shorter than its declared shape");
  return tensor;
}

// x0-hat and epsilon from the model output (epsilon or v prediction)
std::pair<torch::Tensor, torch::Tensor> split(const torch::Tensor& sample, const torch::Tensor& out, double a,
                                              double b, const std::string& prediction_type) {
  if (prediction_type == "v_prediction") return {a * sample - b * out, a * out + b * sample};
  return {(sample - b * out) / a, out};
}

}  // namespace

std::vector<Step> load_step_table(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<Step> table;
  Step s{};
  int draws = 0;
  while (in >> s.t >> s.a_t >> s.b_t >> s.a_prev >> s.c >> s.sigma >> draws) {
    s.draws_noise = draws != 0;
    table.push_back(s);
  }
  if (table.empty()) throw std::runtime_error(path + " holds no steps");
  return table;
}

Request load_request(const std::string& dir) {
  Request r;
  std::ifstream meta(dir + "/meta.txt");
  int64_t n, c, h, w, s;
  if (!(meta >> n >> c >> h >> w >> s >> r.guidance_scale >> r.prediction_type))
    throw std::runtime_error(dir + "/meta.txt: expected 'N C h w S guidance_scale prediction_type'");
  if (r.prediction_type != "epsilon" && r.prediction_type != "v_prediction")
    throw std::runtime_error(dir + "/meta.txt: prediction_type " + r.prediction_type +
                             " is not supported (epsilon or v_prediction)");
  r.input_ids = read_raw(dir + "/input_ids.i64", {3, 77}, torch::kInt64);
  r.x0 = read_raw(dir + "/x0.f32", {n, c, h, w}, torch::kFloat32);
  r.z = read_raw(dir + "/z.f32", {n, c, h, w}, torch::kFloat32);
  r.noise = read_raw(dir + "/noise.f32", {s, n, c, h, w}, torch::kFloat32);
  r.table = load_step_table(dir + "/step_table.txt");
  return r;
}

struct Engine::Impl {
  torch::inductor::AOTIModelPackageLoader text_encoder, unet;
  explicit Impl(const std::string& dir)
      : text_encoder(dir + "/text_encoder/model.pt2"), unet(dir + "/unet/model.pt2") {}
};

// Engines exported with --kernels or --int8 call rtcore's Triton ops (torch.ops.rtcore.*), which only the Python
// runtime registers: refuse them here with a message rather than fail inside the first model call. There is no
// JSON parser in libtorch; the manifest is written by json.dumps(indent=2), so a flag reads `"kernels": true` and
// an int8 mode `"int8": true` (older engines) or `"int8": "dynamic"` / `"static"`.
static const std::string& embeddable(const std::string& dir) {
  std::ifstream in(dir + "/manifest.json");
  if (!in) throw std::runtime_error(dir + " is not an engine directory: no manifest.json");
  std::stringstream text;
  text << in.rdbuf();
  for (const char* flag : {"\"kernels\": true", "\"int8\": true", "\"int8\": \"dynamic\"", "\"int8\": \"static\""}) {
    if (text.str().find(flag) != std::string::npos)
      throw std::runtime_error(dir + " was exported with --kernels or --int8: its graphs call rtcore's Triton ops, "
                               "which only the Python runtime registers; export it without them for C++");
  }
  return dir;
}

Engine::Engine(const std::string& engine_dir) : impl_(std::make_unique<Impl>(embeddable(engine_dir))) {}
Engine::~Engine() = default;

torch::Tensor Engine::edit(const Request& r) {
  torch::NoGradGuard no_grad;
  const auto n = r.z.size(0);
  auto emb = impl_->text_encoder.run({r.input_ids})[0];  // (3, 77, D): source, unconditional, target
  auto rows = [&](int64_t k) { return emb.narrow(0, k, 1).expand({n, emb.size(1), emb.size(2)}); };
  auto context = torch::cat({rows(0), rows(1), rows(2)}).contiguous();  // [y_src, x_uncond, x_tgt]
  auto x = r.z.clone(), y = r.z.clone();
  int64_t noise_index = 0;
  for (const auto& s : r.table) {
    auto t = torch::full({1}, s.t, torch::kInt64);
    auto out = impl_->unet.run({torch::cat({y, x, x}).contiguous(), t, context})[0];
    auto eps_src = out.narrow(0, 0, n), eps_u = out.narrow(0, n, n), eps_t = out.narrow(0, 2 * n, n);
    auto eps_tgt = eps_u + r.guidance_scale * (eps_t - eps_u);
    auto [x0_src, e_src] = split(y, eps_src, s.a_t, s.b_t, r.prediction_type);
    auto [x0_tgt, e_tgt] = split(x, eps_tgt, s.a_t, s.b_t, r.prediction_type);
    torch::Tensor y_next = r.x0;  // t' <= 0: the source trajectory lands on x0
    if (s.draws_noise) {
      y_next = s.a_prev * r.x0 + (s.c / s.b_t) * (y - s.a_t * r.x0);
      if (s.sigma > 0) y_next = y_next + s.sigma * r.noise[noise_index++];
    }
    // the sigma-free update of docs/DESIGN.md section 3: x' = mu_tgt + (y' - mu_src)
    x = s.a_prev * x0_tgt + s.c * e_tgt + (y_next - (s.a_prev * x0_src + s.c * e_src));
    y = y_next;
  }
  return x;
}

}  // namespace rtcore
