// rtcore C++ embedding: run a CycleDiffusion edit on a `compile` engine directory's AOTInductor packages.
// The request format is described in rtcore/cpp_request.py (plain files: meta.txt, *.f32, *.i64, step_table.txt).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>  // tensors and ATen ops: the whole C++ frontend (torch/torch.h) takes twice as long to compile

namespace rtcore {

struct Step {  // one row of step_table.txt
  int64_t t;
  double a_t, b_t, a_prev, c, sigma;
  bool draws_noise;
};

struct Request {
  torch::Tensor input_ids;  // (3, 77) int64: [source, unconditional, target]
  torch::Tensor x0, z;      // (N, C, h, w) float32
  torch::Tensor noise;      // (S, N, C, h, w) float32
  double guidance_scale = 7.5;
  std::string prediction_type = "epsilon";
  std::vector<Step> table;
};

Request load_request(const std::string& dir);
std::vector<Step> load_step_table(const std::string& path);

class Engine {
 public:
  explicit Engine(const std::string& engine_dir);
  ~Engine();
  // The 3-row loop (source guidance 1): returns the final target latents (N, C, h, w) float32.
  torch::Tensor edit(const Request& request);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rtcore
