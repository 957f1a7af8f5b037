// test_post_prefill.cpp with a zero score-tile budget (AttentionOptions::post_score_tile_bytes):
// pass 2 of the post-softmax prefill walk recomputes every score tile (the variant long caches
// take) instead of reading it back.
#define TT_POST_SCORE_TILE_BYTES 0
#define TT_POST_SUITE PostSoftmaxTilesRecomputed
#include "test_post_prefill.cpp"
