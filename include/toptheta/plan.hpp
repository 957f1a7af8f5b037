#pragma once
#include "attention.hpp"
