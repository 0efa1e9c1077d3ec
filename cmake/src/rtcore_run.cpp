// rtcore-run ENGINE_DIR REQUEST_DIR OUT.f32: one CycleDiffusion edit, final latents written as raw float32.
#include <fstream>
#include <iostream>

#include "rtcore_embed.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: rtcore-run ENGINE_DIR REQUEST_DIR OUT.f32\n";
    return 2;
  }
  try {
    rtcore::Engine engine(argv[1]);
    auto latents = engine.edit(rtcore::load_request(argv[2])).contiguous();
    std::ofstream out(argv[3], std::ios::binary);
    out.write(static_cast<const char*>(latents.data_ptr()), latents.numel() * latents.element_size());
    std::cout << "wrote " << argv[3] << " " << latents.sizes() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "rtcore-run: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
